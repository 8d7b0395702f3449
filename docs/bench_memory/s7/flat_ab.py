"""The flat model's decode (vanilla-small, batch 52 as in the fp32 benchmark, 128-token
prompts, 2,048 new tokens), one process, ABAB: its single query over the long cache through
SDPA (main) against fp32 matmuls. Prints tokens/s of the decode phase.

    python docs/bench_memory/s7/flat_ab.py
"""

import math

import torch

import photon.model.layers as L
from photon.inference.workload import run_workload
from photon.model.lm import build_model

sdpa_attend = L.attend
def matmul_attend(q, k, v, mask):
    if q.shape[2] != 1:
        return sdpa_attend(q, k, v, mask)
    scores = (q.float() @ k.float().transpose(-1, -2)) * q.shape[-1] ** -0.5
    if mask is not None:
        scores = scores.masked_fill(~mask, -math.inf)
    return (scores.softmax(-1) @ v.float()).to(v.dtype)
torch.manual_seed(0)
m = build_model("vanilla-small").eval()
run_workload(m, "hiergen", 52, 128, 32)
res: dict[str, list[float]] = {}
for _ in range(2):
    for name, fn in (("sdpa", sdpa_attend), ("matmul", matmul_attend)):
        L.attend = fn
        pre, tot, _ = run_workload(m, "hiergen", 52, 128, 2048)
        res.setdefault(name, []).append(52 * 2048 / (tot - pre))
        print(name, f"{res[name][-1]:,.0f}", flush=True)
