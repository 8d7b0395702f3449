"""Decode tokens/s of each model with its global caches read through SDPA or explicit fp32
matmuls (`make_decoder(attention=...)`), one process, ABBA per model: what the timed kernel
choice (`photon.inference.cache.fastest_kernel`) changes. DE workload (128-token prompts),
the benchmark's batches (vanilla 52, PHOTON 256); tokens/s of the decode phase.

Ran at commit b9be886. It calls `run_workload(..., attention=)` as that tree defined it
(today `photon bench --attention sdpa|matmul` compares the two kernels through the
benchmark), so it runs from a checkout of that commit, where it sits at
docs/bench_memory/s8/kernel_ab.py:

    git worktree add /tmp/photon-b9be886 b9be886 && cd /tmp/photon-b9be886
    PYTHONPATH=. python docs/bench_memory/s8/kernel_ab.py [new tokens, default 2048]
"""

import sys

import torch

from photon.inference.workload import run_workload
from photon.model.lm import build_model

gen = int(sys.argv[1]) if len(sys.argv) > 1 else 2048
cases = [("vanilla-small", "hiergen", 52), ("photon-small", "hiergen", 256),
         ("photon-small", "recgen", 256), ("photon-small-bounded", "hiergen", 256)]
for name, mode, batch in cases:
    torch.manual_seed(0)
    model = build_model(name).eval()
    for kernel in ("sdpa", "matmul"):  # warm-up
        run_workload(model, mode, batch, 128, 32, attention=kernel)
    result: dict[str, list[str]] = {"sdpa": [], "matmul": []}
    for kernel in ("sdpa", "matmul", "matmul", "sdpa"):
        prefill_s, total_s, _ = run_workload(model, mode, batch, 128, gen, attention=kernel)
        result[kernel].append(f"{batch * gen / (total_s - prefill_s):,.0f}")
    print(f"{name} {mode} batch {batch}: sdpa {', '.join(result['sdpa'])}; "
          f"matmul {', '.join(result['matmul'])} tokens/s", flush=True)
