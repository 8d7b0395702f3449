"""The LM head inside photon-small's RecGen decode (batch 256, 512 new tokens): its time and
FLOP/s, with a fresh output per call ("plain") or written into a buffer kept across calls
("out"), one process, ABBA.

Ran at commit 987e1e2. It replaces the LM head's `forward` on the model it builds, so it
runs from a checkout of that commit, where it sits at docs/bench_memory/s8/head_out.py:

    git worktree add /tmp/photon-987e1e2 987e1e2 && cd /tmp/photon-987e1e2
    PYTHONPATH=. python docs/bench_memory/s8/head_out.py
"""

import time

import torch

from photon.inference.workload import run_workload
from photon.model.lm import build_model

torch.manual_seed(0)
model = build_model("photon-small").eval()
head = model.lm_head
forward = head.forward
buffers: dict[torch.Size, torch.Tensor] = {}
spent = {"seconds": 0.0, "calls": 0}


def into_buffer(x: torch.Tensor) -> torch.Tensor:
    if x.shape not in buffers:
        buffers[x.shape] = x.new_empty(x.shape[0], head.weight.shape[0])
    return torch.mm(x, head.weight.t(), out=buffers[x.shape])


def timed(fn):
    def call(x: torch.Tensor) -> torch.Tensor:
        started = time.perf_counter()
        y = fn(x)
        spent["seconds"] += time.perf_counter() - started
        spent["calls"] += 1
        return y
    return call


run_workload(model, "recgen", 256, 128, 64)
for name, fn in [("plain", forward), ("out", into_buffer), ("out", into_buffer),
                 ("plain", forward)]:
    head.forward = timed(fn)
    spent.update(seconds=0.0, calls=0)
    prefill_s, total_s, _ = run_workload(model, "recgen", 256, 128, 512)
    flops = 2 * 256 * 256 * 4096 * spent["calls"]
    print(f"{name} {256 * 512 / (total_s - prefill_s):,.0f} tok/s; head "
          f"{spent['seconds']:.2f}s of {total_s - prefill_s:.2f}s, "
          f"{flops / spent['seconds'] / 1e9:.0f} GFLOP/s", flush=True)
