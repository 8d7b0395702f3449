"""fp32 against bf16 decode, one process, interleaved: tokens/s at a fixed batch, greedy,
128-token prompts, 512 new tokens (decode phase only); the flat model at twice the batch in
bf16 (the same cache memory). Prints a JSON line per run (dtype-ab.jsonl).

Ran at commit afceb8a. It calls `photon.inference.workload.run_workload` as that tree
defined it, so it runs from a checkout of that commit, where it sits at
docs/bench_memory/s7/dtype_ab.py:

    git worktree add /tmp/photon-afceb8a afceb8a && cd /tmp/photon-afceb8a
    PYTHONPATH=. python docs/bench_memory/s7/dtype_ab.py
"""

import json

import torch

from photon.inference.workload import run_workload
from photon.model.lm import build_model

cases = [("vanilla-small", "hiergen", {torch.float32: 52, torch.bfloat16: 104}),
         ("photon-small", "hiergen", {torch.float32: 256, torch.bfloat16: 256}),
         ("photon-small", "recgen", {torch.float32: 256, torch.bfloat16: 256}),
         ("photon-small-bounded", "hiergen", {torch.float32: 256, torch.bfloat16: 256})]
models = {}
for name in {c[0] for c in cases}:
    torch.manual_seed(0)
    m = build_model(name).eval()
    models[(name, torch.float32)] = m
    models[(name, torch.bfloat16)] = build_model(name).eval().to(torch.bfloat16)
    models[(name, torch.bfloat16)].load_state_dict(m.state_dict())
for r in range(2):
    for name, mode, batch in cases:
        for dt in (torch.float32, torch.bfloat16):
            m = models[(name, dt)]
            if r == 0:
                run_workload(m, mode, batch[dt], 128, 32)
            pre, tot, _ = run_workload(m, mode, batch[dt], 128, 512)
            print(json.dumps({"round": r + 1, "model": name, "mode": mode,
                              "dtype": str(dt)[6:], "batch": batch[dt],
                              "tok_s": batch[dt] * 512 / (tot - pre)}), flush=True)
