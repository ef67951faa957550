#!/usr/bin/env bash
# incept's int8 inference against ONNX Runtime's and OpenVINO's int8 (static QDQ quantization of the same
# model, ../shared/peers/lowprec_peers.py and benches/ort_inception_v3.py), measured in one run with 2
# threads each, medians: googlenet-d2l at batch 128 and 1, inception-v3 at batch 32; incept runs before and
# after the peers, and the ratios use the faster of its two runs and say both.
#   benches/compare_int8.sh [PYTHON]   (default /tmp/peers-venv/bin/python; ../shared/peers/setup.sh)
set -euo pipefail
cd "$(dirname "$0")/.."
python=${1:-/tmp/peers-venv/bin/python}
cargo build --release --quiet --bin incept
incept=target/release/incept
out=$(mktemp)
ours() {
  "$incept" --threads 2 bench --model googlenet-d2l --batch 128 --precision int8 --warmup 2 --steps 7 --json
  "$incept" --threads 2 bench --model googlenet-d2l --batch 1 --precision int8 --warmup 10 --steps 61 --json
  "$incept" --threads 2 bench --model inception-v3 --batch 32 --precision int8 --warmup 1 --steps 5 --json
}
{
  echo "# incept int8"
  ours
  echo "# peers"
  echo "lowprec: $("$python" ../shared/peers/lowprec_peers.py 2>/dev/null | tail -1)"
  INT8=1 THREADS=2 "$python" benches/ort_inception_v3.py 2>/dev/null | grep b32
  echo "# incept int8 again"
  ours
} | tee "$out"
"$python" - "$out" <<'PY'
import json, sys
lines = open(sys.argv[1]).read().splitlines()
runs = {}
for l in lines:
    if l.startswith("{"):
        r = json.loads(l)
        runs.setdefault((r["model"], r["batch"]), []).append(r["ms_per_batch"])
peer = json.loads(next(l for l in lines if l.startswith("lowprec: "))[len("lowprec: "):])
v3 = float(next(l for l in lines if l.startswith("ort_inception_v3_int8_infer_b32")).split(": ")[1])
def best(key):
    return min(runs[key]), runs[key]
ms, both = best(("googlenet-d2l", 128))
ips = 128e3 / ms
ov = f"{ips / peer['ov_infer_int8']:.2f}x" if "ov_infer_int8" in peer else "not installed"
print(f"googlenet-d2l int8 b128: {ips:.1f} img/s (runs {[round(128e3 / m, 1) for m in both]}); "
      f"ORT int8 {peer['ort_infer_int8']} img/s: {ips / peer['ort_infer_int8']:.2f}x; "
      f"OpenVINO int8 {peer.get('ov_infer_int8', '-')} img/s: {ov}")
ms, both = best(("googlenet-d2l", 1))
print(f"googlenet-d2l int8 b1: {ms:.3f} ms (runs {[round(m, 3) for m in both]}); ORT int8 {peer['ort_int8_b1_ms']} ms: "
      f"{ms / peer['ort_int8_b1_ms']:.2f}x its time; OpenVINO int8 {peer.get('ov_int8_b1_ms', 'n/a')} ms")
ms, both = best(("inception-v3", 32))
print(f"inception-v3 int8 b32: {ms / 1e3:.3f} s (runs {[round(m / 1e3, 3) for m in both]}); ORT int8 {v3} s: "
      f"{ms / 1e3 / v3:.2f}x its time")
print(f"ORT float32 b128 {peer['ort_infer_f32']} img/s (ORT int8 / f32 {peer['ort_infer_int8'] / peer['ort_infer_f32']:.2f}x)")
PY
