"""Decode tokens/s with glibc's allocator as it comes ("default") or with its mmap and trim
thresholds raised to 1 GiB ("tuned": freed memory is kept, no fresh pages per call), one
process per label, run in the order default, tuned, tuned, default. 1,024 new tokens after
128-token prompts; the page faults per 1,000 tokens as well.

Ran at commit 987e1e2. It calls `run_workload` as that tree defined it, so it runs from a
checkout of that commit, where it sits at docs/bench_memory/s8/malloc_ab.py:

    git worktree add /tmp/photon-987e1e2 987e1e2 && cd /tmp/photon-987e1e2
    for l in default tuned tuned default; do
        PYTHONPATH=. python docs/bench_memory/s8/malloc_ab.py $l
    done
"""

import ctypes
import resource
import sys

import torch

from photon.inference.workload import run_workload
from photon.model.lm import build_model

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3


def faults() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


label = sys.argv[1]
if label == "tuned":
    libc = ctypes.CDLL("libc.so.6")
    assert libc.mallopt(M_MMAP_THRESHOLD, 1 << 30) == 1
    assert libc.mallopt(M_TRIM_THRESHOLD, 1 << 30) == 1
results = []
for name, mode, batch in [("vanilla-small", "hiergen", 52), ("photon-small", "hiergen", 256),
                          ("photon-small", "recgen", 256),
                          ("photon-small-bounded", "hiergen", 256)]:
    torch.manual_seed(0)
    model = build_model(name).eval()
    run_workload(model, mode, batch, 128, 32)
    before = faults()
    prefill_s, total_s, _ = run_workload(model, mode, batch, 128, 1024)
    results.append(f"{name} {mode}: {batch * 1024 / (total_s - prefill_s):,.0f} tok/s, "
                   f"{(faults() - before) / (batch * 1024) * 1000:,.1f} faults/1k tok")
print(label, " | ".join(results), flush=True)
