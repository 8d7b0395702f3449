"""Why the attention kernels are timed after the model is built: page faults (`ru_minflt`)
and time per call of each kernel over 64 sequences x 1,088 of 2,176 cached positions
(vanilla-small's shape), in a fresh process, then after a short decode of vanilla-small.
How the fresh process behaves depends on its allocation history: with the same tensors
made outside inference mode, only the matmuls' first calls faulted (483 faults per call,
then none) in one run.

Ran at commit 7cbb456. It calls `photon.model.layers.attend` with a kernel argument as that
tree defined it, so it runs from a checkout of that commit, where it sits at
docs/bench_memory/s8/faults.py:

    git worktree add /tmp/photon-7cbb456 7cbb456 && cd /tmp/photon-7cbb456
    PYTHONPATH=. python docs/bench_memory/s8/faults.py
"""

import resource
import time

import torch

from photon.inference.workload import run_workload
from photon.model.layers import attend
from photon.model.lm import build_model


def faults() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def probe(when: str) -> None:
    with torch.inference_mode():
        for kernel in ("sdpa", "matmul", "sdpa", "matmul"):
            before, started = faults(), time.perf_counter()
            for _ in range(10):
                attend(q, k, v, None, kernel)
            print(f"{when}: {kernel:6} {(faults() - before) / 10:7.1f} faults/call "
                  f"{(time.perf_counter() - started) * 100:.2f} ms/call", flush=True)


with torch.inference_mode():
    q = torch.randn(64, 8, 1, 32)
    k, v = (torch.randn(64, 8, 2176, 32)[:, :, :1088] for _ in range(2))
probe("fresh process")
torch.manual_seed(0)
run_workload(build_model("vanilla-small").eval(), "hiergen", 52, 128, 256, attention="sdpa")
probe("after a decode")
