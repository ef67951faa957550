#!/usr/bin/env python3
"""One SGD step of incept against the same step in float64 and float32 PyTorch, per tensor.

    /tmp/peers-venv/bin/python benches/sgd_step_vs_torch.py MODEL [--size S] [--batch 4] [--seed 0] [--incept PATH]

Draws a well-conditioned start (conv and linear weights He-normal, batch-norm scale uniform in [0.5, 1.5],
small random biases and shifts, inputs uniform in [-1, 1]), runs
`incept train --init W --data-npy X Y --optimizer sgd --lr 1 --momentum 0 --weight-decay 0 --batch B
--steps 1 --no-shuffle --save OUT` and prints, per tensor, the relative L2 distance of incept's update
(new - old) from float64 PyTorch's, next to PyTorch float32's own distance, and the bar
max(1e-2, 10 x float32's distance). Running statistics are compared as values. Exits 1 if any tensor
misses its bar.
"""
import argparse, os, subprocess, sys, tempfile
import numpy as np
import torch
from safetensors.torch import load_file, save_file

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "shared", "reference"))
import models  # noqa: E402

p = argparse.ArgumentParser()
p.add_argument("model")
p.add_argument("--size", type=int)
p.add_argument("--batch", type=int, default=4)
p.add_argument("--seed", type=int, default=0)
p.add_argument("--incept", default="target/release/incept")
p.add_argument("--all", action="store_true", help="print every tensor, in state-dict order")
p.add_argument("--threads", type=int, help="incept --threads")
p.add_argument("--conv-algo", default="auto", help="incept train --conv-algo (naive: float64-accumulating convolutions)")
p.add_argument("--keep", help="directory to keep the files in")
a = p.parse_args()
size = a.size or {"inception-tf-cifar": 32}.get(a.model, 96)
torch.manual_seed(a.seed)
torch.set_num_threads(2)

net = models.by_name(a.model)
in_ch = 1 if a.model == "googlenet-d2l" else 3
with torch.no_grad():
    for name, t in net.state_dict().items():
        if name.endswith("num_batches_tracked") or "running" in name:
            continue
        if t.dim() > 1:
            torch.nn.init.kaiming_normal_(t)
        elif name.endswith("weight"):
            t.uniform_(0.5, 1.5)
        else:
            t.uniform_(-0.05, 0.05)
init = {k: v.contiguous() for k, v in net.state_dict().items()}
x = torch.rand(a.batch, in_ch, size, size) * 2 - 1
y = torch.randint(0, 10, (a.batch,))

d = a.keep or tempfile.mkdtemp()
os.makedirs(d, exist_ok=True)
save_file(init, f"{d}/init.safetensors")
np.save(f"{d}/x.npy", x.numpy())
np.save(f"{d}/y.npy", y.numpy().astype(np.int64))
cmd = [a.incept] + (["--threads", str(a.threads)] if a.threads else []) + ["train", "--model", a.model, "--init", f"{d}/init.safetensors", "--data-npy", f"{d}/x.npy",
       f"{d}/y.npy", "--optimizer", "sgd", "--lr", "1", "--momentum", "0", "--weight-decay", "0", "--batch",
       str(a.batch), "--steps", "1", "--no-shuffle", "--save", f"{d}/out.safetensors", "--out", f"{d}/run",
       "--quiet", "--conv-algo", a.conv_algo]
r = subprocess.run(cmd, capture_output=True, text=True)
if r.returncode != 0:
    print(" ".join(cmd), "\n", r.stdout, r.stderr)
    sys.exit(2)
ours = load_file(f"{d}/out.safetensors")


def step(dtype):
    m = models.by_name(a.model).to(dtype)
    m.load_state_dict({k: v.to(dtype) if v.is_floating_point() else v for k, v in init.items()})
    m.train()
    opt = torch.optim.SGD(m.parameters(), lr=1.0)
    loss = torch.nn.functional.cross_entropy(m(x.to(dtype)), y)
    opt.zero_grad()
    loss.backward()
    opt.step()
    return {k: v.detach().double() for k, v in m.state_dict().items()}, loss.item()


f64, loss64 = step(torch.float64)
f32, loss32 = step(torch.float32)
print(f"loss: float64 {loss64:.6f}, float32 {loss32:.6f}")


def rel(u, v):
    return (u - v).norm().item() / max(v.norm().item(), 1e-30)


worst, fails, rows = 0.0, 0, []
for k, ref in f64.items():
    if k.endswith("num_batches_tracked"):
        continue
    if k not in ours:
        print(f"missing in incept's output: {k}")
        fails += 1
        continue
    start = init[k].double()
    mine = ours[k].double()
    if "running" in k:
        e, e32 = rel(mine, ref), rel(f32[k], ref)
    elif k.endswith(".0.bias") and k[:-len("0.bias")] + "1.running_mean" in f64:
        # A conv bias in front of a batch norm: its exact gradient is 0, so what remains is rounding.
        # Compared as sizes: ours within 10x PyTorch float32's rounding (or 1e-7 absolute).
        e = (mine - start).norm().item()
        e32 = (f32[k] - start).norm().item()
        bar = max(1e-7, 10 * e32)
        rows.append((e / bar, k + " (zero grad)", e, e32, bar))
        worst = max(worst, e / bar)
        fails += e > bar
        continue
    else:
        e, e32 = rel(mine - start, ref - start), rel(f32[k] - start, ref - start)
    bar = max(1e-2, 10 * e32)
    rows.append((e / bar, k, e, e32, bar))
    worst = max(worst, e / bar)
    fails += e > bar
shown = rows if a.all else sorted(rows, reverse=True)[:12]
for frac, k, e, e32, bar in shown:
    print(f"{k:48s} incept {e:.2e}  torch-f32 {e32:.2e}  bar {bar:.1e}  {'FAIL' if e > bar else 'ok'}")
rel_rows = [r for r in rows if "zero grad" not in r[1]]
med = sorted(r[2] for r in rel_rows)[len(rel_rows) // 2]
med32 = sorted(r[3] for r in rel_rows)[len(rel_rows) // 2]
print(f"{a.model}: {len(rel_rows)} tensors compared, median incept {med:.2e} (torch float32 {med32:.2e}), "
      f"worst {max(r[2] for r in rel_rows):.2e} (torch float32 {max(r[3] for r in rel_rows):.2e}); {len(rows) - len(rel_rows)} zero-gradient biases; "
      f"{fails} over the bar")
sys.exit(1 if fails else 0)
