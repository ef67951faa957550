#!/usr/bin/env bash
# Whole-model figures for googlenet-d2l, incept and PyTorch measured in one run, 2 threads each.
#   benches/compare_torch.sh [PYTHON]     (PYTHON: the peer environment's python, default /tmp/peers-venv/bin/python;
#                                           ../shared/peers/setup.sh builds it)
set -euo pipefail
cd "$(dirname "$0")/.."
python=${1:-/tmp/peers-venv/bin/python}
cargo build --release --quiet --bin incept
incept=target/release/incept
echo "# incept"
for mode in train infer; do
  "$incept" --threads 2 bench --model googlenet-d2l --batch 128 --mode "$mode" --warmup 2 --steps 5 --json
done
"$incept" --threads 2 bench --model googlenet-d2l --batch 1 --mode infer --warmup 5 --steps 21 --json
echo "# PyTorch (../shared/peers/bench_torch.py model train)"
THREADS=2 "$python" ../shared/peers/bench_torch.py model train 2>/dev/null | grep googlenet_d2l
