#!/usr/bin/env python3
"""The chapter's recipe in PyTorch on this machine, for comparison with `incept train`: googlenet_d2l
(../shared/reference/models.py), Fashion-MNIST resized to 96 with PIL + ToTensor as d2l's loader does,
Adam 1e-3, batch 128, shuffled, 2 threads. Prints the chapter's epoch line with the mean loss, and
the first step whose training loss fell below 2.0 (the end of the initial plateau).

    SEED=0 /tmp/peers-venv/bin/python benches/torch_fashion_epoch.py [EPOCHS] [DATA_DIR]

BF16=1 runs the forward passes (training and test) under `torch.autocast("cpu", dtype=torch.bfloat16)`:
PyTorch's bf16 mixed precision, the peer of `incept train --precision bf16`.
"""
import gzip, os, sys, time
import numpy as np
import torch
from PIL import Image
from torch import nn
from torchvision import transforms

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "shared", "reference"))
import models  # noqa: E402

epochs = int(sys.argv[1]) if len(sys.argv) > 1 else 1
root = sys.argv[2] if len(sys.argv) > 2 else "/usr/share/datasets/fashion-mnist"
torch.set_num_threads(2)
torch.manual_seed(int(os.environ.get("SEED", "0")))


def idx(name, offset):
    with gzip.open(os.path.join(root, name), "rb") as f:
        return np.frombuffer(f.read(), dtype=np.uint8, offset=offset)


class Fashion(torch.utils.data.Dataset):
    def __init__(self, prefix):
        self.x = idx(f"{prefix}-images-idx3-ubyte.gz", 16).reshape(-1, 28, 28)
        self.y = idx(f"{prefix}-labels-idx1-ubyte.gz", 8).astype(np.int64)
        self.t = transforms.Compose([transforms.Resize(96), transforms.ToTensor()])

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        return self.t(Image.fromarray(self.x[i], mode="L")), self.y[i]


train = torch.utils.data.DataLoader(Fashion("train"), batch_size=128, shuffle=True)
test = torch.utils.data.DataLoader(Fashion("t10k"), batch_size=128)
net = models.googlenet_d2l()
opt = torch.optim.Adam(net.parameters(), lr=1e-3)
loss_fn = nn.CrossEntropyLoss()
bf16 = os.environ.get("BF16") == "1"
autocast = lambda: torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16)  # noqa: E731
step, below_2 = 0, None
for epoch in range(epochs):
    net.train()
    start, loss_sum, correct, n = time.time(), 0.0, 0, 0
    for x, y in train:
        with autocast():
            out = net(x)
            loss = loss_fn(out, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        step += 1
        if below_2 is None and loss.item() < 2.0:
            below_2 = step
            print(f"step {step}: training loss {loss.item():.4f}, first below 2.0", flush=True)
        loss_sum += loss.item() * len(y)
        correct += (out.argmax(1) == y).sum().item()
        n += len(y)
    net.eval()
    with torch.no_grad():
        with autocast():
            test_correct = sum((net(x).argmax(1) == y).sum().item() for x, y in test)
    print(f"epoch {epoch + 1}, loss {loss_sum / n:.4f}, train acc {correct / n:.3f}, "
          f"test acc {test_correct / 10000:.3f}, time {time.time() - start:.1f} sec", flush=True)
