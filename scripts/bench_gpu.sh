#!/usr/bin/env bash
# The paper's protocol (docs/PHOTON.md §6) at paper scale on one CUDA GPU, in one command:
# vanilla-600m, block-600m, photon-600m (HierGen and RecGen) and photon-600m-bounded,
# workloads PF and DE, bf16, the batch picked from a memory budget, every model's decode
# steps compiled (`--compile`: static caches captured as CUDA graphs for PHOTON and the flat
# model alike), plus a context sweep. Randomly initialised weights: speed and memory do not
# depend on them. Writes OUT/bench.json, OUT/bench.png, OUT/context_sweep.png and
# OUT/bench.log, and prints how long it ran. Not yet run on a GPU: no device has been lent.
#
#   bash scripts/bench_gpu.sh [OUT]      # BUDGET_GIB (default 100), MAX_BATCH (4096),
#                                        # SIZE (600m; 900m, 1.2b), COMPILE (1; 0: eager)
set -euo pipefail
size=${SIZE:-600m}
out=${1:-runs/bench-$size}
mkdir -p "$out"
start=$(date +%s)
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$out/gpu.txt"
compile=()
[ "${COMPILE:-1}" = 1 ] && compile=(--compile)
photon bench --models "vanilla-$size" "block-$size" "photon-$size" "photon-$size-bounded" \
    --device cuda --dtype bf16 "${compile[@]}" \
    --budget-gib "${BUDGET_GIB:-100}" --max-batch "${MAX_BATCH:-4096}" \
    --sweep 2048,8192,32768 --sweep-batch 8 --out "$out" --json 2>&1 | tee "$out/bench.log"
echo "bench_gpu.sh: ran $(( $(date +%s) - start )) s; results in $out" | tee -a "$out/bench.log"
