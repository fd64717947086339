#!/usr/bin/env bash
# Run every benchmark, one after the other (they compete for the CPU: never run them in parallel).
# Results: bench/results/*.{md,csv,json}. Total about 30 minutes on 2 cores; see bench/README.md.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"
export PATH="$ROOT/.venv/bin:$PATH"      # dvc.yaml runs `python -m pipeline.<stage>`
export TF_CPP_MIN_LOG_LEVEL=2
BENCH_VENV="${BENCH_VENV:-$ROOT/bench/.venv}"
echo "load before: $(uptime)"
.venv/bin/python bench/time_to_verdict.py "$@"
.venv/bin/python bench/fixed_costs.py
if BENCH_VENV="$BENCH_VENV" bench/setup_venv.sh; then
  "$BENCH_VENV/bin/python" bench/model_speed.py
else
  echo "keras-hub could not be installed: measuring our models only" >&2
  .venv/bin/python bench/model_speed.py --models ours-resnet18,ours-default
fi
echo "load after: $(uptime)"
