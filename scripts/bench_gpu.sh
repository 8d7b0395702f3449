#!/usr/bin/env bash
# The paper's protocol (docs/PHOTON.md §6) at paper scale on one CUDA GPU: vanilla-600m,
# block-600m and photon-600m (HierGen and RecGen), workloads PF and DE, bf16, the batch
# picked from a memory budget, plus a context sweep. Randomly initialised weights: speed
# and memory do not depend on them. Sized to finish in under 10 minutes on one H100/H200.
#
#   bash scripts/bench_gpu.sh [OUT]      # BUDGET_GIB (default 100), MAX_BATCH (4096)
set -euo pipefail
out=${1:-runs/bench-600m}
mkdir -p "$out"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$out/gpu.txt"
photon bench --size 600m --device cuda --dtype bf16 \
    --budget-gib "${BUDGET_GIB:-100}" --max-batch "${MAX_BATCH:-4096}" \
    --sweep 2048,8192,32768 --sweep-batch 8 --out "$out" --json 2>&1 | tee "$out/bench.log"
