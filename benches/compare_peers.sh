#!/usr/bin/env bash
# incept against PyTorch 2.15 (CPU, oneDNN) and ONNX Runtime, measured in one run with 2 threads each,
# medians; then the ratios README and docs/performance.md quote: googlenet-d2l (training, inference at batch 128 and 1, peak
# RSS), inception-tf-cifar training at batch 128, inception-v3 inference at batch 32; then in bf16
# (`--precision bf16`) against PyTorch's bf16 autocast, ONNX Runtime's float32 and OpenVINO's bf16 where
# it is installed (../shared/peers/lowprec_peers.py): googlenet-d2l training and inference at batch 128
# with the training's peak RSS, inception-v3 inference at batch 32.
#   benches/compare_peers.sh [PYTHON]   (PYTHON: the peer environment's python, default
#                                        /tmp/peers-venv/bin/python; ../shared/peers/setup.sh builds it)
# Peak RSS of each training process comes from getrusage on the child (Linux reports KiB).
set -euo pipefail
cd "$(dirname "$0")/.."
python=${1:-/tmp/peers-venv/bin/python}
cargo build --release --quiet --bin incept
incept=target/release/incept
out=$(mktemp)
peak_rss() { # command... -> prints "peak_rss_mib: X" after running it
  "$python" - "$@" <<'PY'
import resource, subprocess, sys
subprocess.run(sys.argv[1:], check=True)
print(f"peak_rss_mib: {resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024:.0f}")
PY
}
{
  echo "# incept"
  peak_rss "$incept" --threads 2 bench --model googlenet-d2l --batch 128 --mode train --warmup 2 --steps 5 --json
  "$incept" --threads 2 bench --model googlenet-d2l --batch 128 --mode infer --warmup 2 --steps 7 --json
  "$incept" --threads 2 bench --model googlenet-d2l --batch 1 --mode infer --warmup 5 --steps 41 --json
  "$incept" --threads 2 bench --model inception-tf-cifar --batch 128 --mode train --warmup 2 --steps 5 --json
  "$incept" --threads 2 bench --model inception-v3 --batch 32 --mode infer --warmup 1 --steps 3 --json
  echo "# incept bf16"
  peak_rss "$incept" --threads 2 bench --model googlenet-d2l --batch 128 --mode train --warmup 2 --steps 5 --json --precision bf16
  "$incept" --threads 2 bench --model googlenet-d2l --batch 128 --mode infer --warmup 2 --steps 7 --json --precision bf16
  "$incept" --threads 2 bench --model inception-v3 --batch 32 --mode infer --warmup 1 --steps 3 --json --precision bf16
  echo "# PyTorch and ONNX Runtime (../shared/peers/bench_torch.py model ort train v3, benches/ort_inception_v3.py)"
  THREADS=2 "$python" ../shared/peers/bench_torch.py model ort train v3 2>/dev/null | grep -E "googlenet_d2l|inception_tf_cifar|inception_v3"
  THREADS=2 "$python" benches/ort_inception_v3.py 2>/dev/null
  # bench_torch.py's train section also trains two other models; the peak RSS comes from the same
  # googlenet_d2l steps (batch 128, Adam, 2 warm-up + 4 timed) run alone.
  peak_rss "$python" -c "
import sys, torch; sys.path.insert(0, '../shared/reference'); import models
torch.set_num_threads(2); torch.manual_seed(0)
m = models.googlenet_d2l().train(); opt = torch.optim.Adam(m.parameters(), lr=1e-3)
x = torch.rand(128, 1, 96, 96); y = torch.randint(0, 10, (128,)); lossf = torch.nn.CrossEntropyLoss()
for _ in range(6):
    opt.zero_grad(); lossf(m(x), y).backward(); opt.step()
"
  echo "# reduced-precision peers (../shared/peers/lowprec_peers.py)"
  echo "lowprec: $("$python" ../shared/peers/lowprec_peers.py 2>/dev/null | tail -1)"
} | tee "$out"
"$python" - "$out" <<'PY'
import json, re, sys
lines = open(sys.argv[1]).read().splitlines()
ours = {}
for l in lines:
    if l.startswith("{"):
        r = json.loads(l)
        ours[(r["model"], r["mode"], r["batch"], r.get("precision", "f32"))] = r
rss = [float(l.split(":")[1]) for l in lines if l.startswith("peak_rss_mib")]
peer = {k: float(v) for k, v in (l.split(": ") for l in lines if re.match(r"(torch|ort)_", l))}
print("\n| figure | incept | PyTorch | ONNX Runtime | vs PyTorch | vs ORT |\n| --- | --- | --- | --- | --- | --- |")
t = ours[("googlenet-d2l", "train", 128, "f32")]["img_per_s"]; pt = peer["torch_googlenet_d2l_train_b128_img_per_s"]
print(f"| training step (Adam), batch 128, img/s | {t:.1f} | {pt:.1f} | | {t/pt:.2f}x | |")
i = ours[("googlenet-d2l", "infer", 128, "f32")]["img_per_s"]
print(f"| inference, batch 128, img/s | {i:.1f} | {peer['torch_googlenet_d2l_infer_b128_img_per_s']:.1f} | "
      f"{peer['ort_googlenet_d2l_infer_b128_img_per_s']:.1f} | {i/peer['torch_googlenet_d2l_infer_b128_img_per_s']:.2f}x | "
      f"{i/peer['ort_googlenet_d2l_infer_b128_img_per_s']:.2f}x |")
l = ours[("googlenet-d2l", "infer", 1, "f32")]["ms_per_batch"]
print(f"| inference, batch 1, latency ms (lower is better) | {l:.2f} | {peer['torch_googlenet_d2l_infer_b1_latency_ms']:.2f} | "
      f"{peer['ort_googlenet_d2l_infer_b1_latency_ms']:.2f} | {l/peer['torch_googlenet_d2l_infer_b1_latency_ms']:.2f}x the time | "
      f"{l/peer['ort_googlenet_d2l_infer_b1_latency_ms']:.2f}x the time |")
c = ours[("inception-tf-cifar", "train", 128, "f32")]["img_per_s"]; pc = peer["torch_inception_tf_cifar_train_b128_img_per_s"]
print(f"| inception-tf-cifar training step (Adam), batch 128, img/s | {c:.1f} | {pc:.1f} | | {c/pc:.2f}x | |")
v = ours[("inception-v3", "infer", 32, "f32")]["ms_per_batch"] / 1e3
pv, ov = peer["torch_inception_v3_infer_b32_s_per_batch"], peer["ort_inception_v3_infer_b32_s_per_batch"]
print(f"| inception-v3 inference, batch 32, s per batch (lower is better) | {v:.3f} | {pv:.3f} | {ov:.3f} | "
      f"{v/pv:.2f}x the time | {v/ov:.2f}x the time |")
# peak_rss lines in order: incept float32 training, incept bf16 training, PyTorch float32 training.
if len(rss) == 3:
    print(f"| peak RSS of the training process, batch 128, MiB | {rss[0]:.0f} | {rss[2]:.0f} | | {rss[0]/rss[2]:.2f}x | |")
low = json.loads(next(l for l in lines if l.startswith("lowprec: ")).split(": ", 1)[1])
print("\n| bf16 figure | incept bf16 | incept f32 | PyTorch bf16 autocast | ONNX Runtime f32 | OpenVINO bf16 | ratio |\n"
      "| --- | --- | --- | --- | --- | --- | --- |")
bt = ours[("googlenet-d2l", "train", 128, "bf16")]["img_per_s"]
print(f"| training step (Adam), batch 128, img/s | {bt:.1f} | {t:.1f} | {low['torch_train_bf16']:.1f} | | | "
      f"{bt/low['torch_train_bf16']:.2f}x PyTorch bf16 |")
bi = ours[("googlenet-d2l", "infer", 128, "bf16")]["img_per_s"]
ov = low.get("ov_infer_bf16")
print(f"| inference, batch 128, img/s | {bi:.1f} | {i:.1f} | {low['torch_infer_bf16']:.1f} | {low['ort_infer_f32']:.1f} | "
      f"{ov or 0:.1f} | {bi/low['ort_infer_f32']:.2f}x ORT f32" + (f", {bi/ov:.2f}x OpenVINO bf16 |" if ov else " |"))
bv = ours[("inception-v3", "infer", 32, "bf16")]["ms_per_batch"] / 1e3
ort_v3 = peer["ort_inception_v3_infer_b32_s_per_batch"]
print(f"| inception-v3 inference, batch 32, s per batch | {bv:.3f} | {v:.3f} | | {ort_v3:.3f} | | "
      f"{bv/ort_v3:.2f}x ORT f32's time |")
if len(rss) == 3:
    print(f"| peak RSS of the training process, batch 128, MiB | {rss[1]:.0f} | {rss[0]:.0f} | | | | "
          f"{rss[1]/rss[2]:.2f}x PyTorch f32's ({rss[2]:.0f}) |")
PY
