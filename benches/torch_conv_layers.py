"""PyTorch's time for the convolution layers `cargo bench --bench conv` times, in the same run.

Reads a JSON list of layers on stdin (name, batch, cin, cout, h, w, kernel [kh, kw], stride [sh, sw],
pad [ph, pw], input_grad) and prints one JSON object: per name, the median milliseconds of the forward
(conv + bias + ReLU, no autograd) and of forward + backward (the gradients of the weight and bias, and
of the input where input_grad is true), on THREADS threads (default 2), as the layer would run inside a
network whose ReLU follows the convolution.
"""
import json, os, statistics, sys, time
import torch
from torch import nn

torch.set_num_threads(int(os.environ.get("THREADS", "2")))
torch.manual_seed(0)


def median_ms(fn, warm, reps):
    for _ in range(warm):
        fn()
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times) * 1e3


def main():
    layers = json.load(sys.stdin)
    warm, reps = int(os.environ.get("WARMUP", "2")), int(os.environ.get("REPS", "7"))
    out = {}
    for l in layers:
        conv = nn.Conv2d(l["cin"], l["cout"], tuple(l["kernel"]), stride=tuple(l["stride"]), padding=tuple(l["pad"]))
        x = torch.rand(l["batch"], l["cin"], l["h"], l["w"], requires_grad=l["input_grad"])
        with torch.no_grad():
            fwd = median_ms(lambda: torch.relu(conv(x)), warm, reps)
        wrt = ([x] if l["input_grad"] else []) + [conv.weight, conv.bias]
        g = torch.rand_like(torch.relu(conv(x)))
        fwdbwd = median_ms(lambda: torch.autograd.grad(torch.relu(conv(x)), wrt, g), warm, reps)
        out[l["name"]] = {"fwd_ms": fwd, "fwdbwd_ms": fwdbwd}
    print(json.dumps(out))


main()
