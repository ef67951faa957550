#!/usr/bin/env python3
"""incept and PyTorch from the same initial weights on the same batches: per-step training losses.

    /tmp/peers-venv/bin/python benches/torch_same_init.py [STEPS] [DIR]
writes DIR/init.safetensors (PyTorch's default initialisation, seed 0), DIR/x.npy and DIR/y.npy (the first
STEPS*128 Fashion-MNIST training images, resized to 96 with PIL as d2l does), prints PyTorch's loss per
Adam step in float32 and float64, and the incept command that trains on the same batches with a per-step log.
"""
import gzip, os, sys
import numpy as np
import torch
from PIL import Image
from safetensors.torch import load_file, save_file
from torchvision import transforms

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "shared", "reference"))
import models  # noqa: E402

steps = int(sys.argv[1]) if len(sys.argv) > 1 else 40
out = sys.argv[2] if len(sys.argv) > 2 else "/tmp/same-init"
root, batch = "/usr/share/datasets/fashion-mnist", 128
os.makedirs(out, exist_ok=True)
torch.set_num_threads(2)
torch.manual_seed(0)


def idx(name, offset):
    with gzip.open(os.path.join(root, name)) as f:
        return np.frombuffer(f.read(), np.uint8, offset=offset)


images = idx("train-images-idx3-ubyte.gz", 16).reshape(-1, 28, 28)[: steps * batch]
labels = idx("train-labels-idx1-ubyte.gz", 8)[: steps * batch].astype(np.int64)
resize = transforms.Compose([transforms.Resize(96), transforms.ToTensor()])
x = torch.stack([resize(Image.fromarray(a, mode="L")) for a in images])
np.save(f"{out}/x.npy", x.numpy())
np.save(f"{out}/y.npy", labels)
save_file({k: v.contiguous() for k, v in models.googlenet_d2l().state_dict().items()}, f"{out}/init.safetensors")

for dtype in (torch.float32, torch.float64):
    net = models.googlenet_d2l()
    net.load_state_dict(load_file(f"{out}/init.safetensors"))
    net = net.to(dtype)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    for s in range(steps):
        xb, yb = x[s * batch:(s + 1) * batch].to(dtype), torch.from_numpy(labels[s * batch:(s + 1) * batch])
        loss = torch.nn.functional.cross_entropy(net(xb), yb)
        opt.zero_grad()
        loss.backward()
        opt.step()
        print(f"{dtype} step {s + 1} loss {loss.item():.4f}", flush=True)

print(f"incept: incept train --init {out}/init.safetensors --data-npy {out}/x.npy {out}/y.npy "
      f"--no-shuffle --epochs 1 --test-limit 128 --step-log {out}/incept-steps.jsonl --out {out}/run")
