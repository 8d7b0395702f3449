"""Decode tokens/s of one source tree, as JSON lines: run it for two trees in ABBA order to
compare them on this machine (its speed drifts by up to 10 % over minutes).

It ran at commit 2c4aac9 (the "new" tree) against 8bd6c58 (the "old" one), each tree imported
from a checkout of its own: PYTHONPATH puts the checkout's photon before the editable install,
whose import hook comes after the path search. The script itself is this file (it imports only
names both trees define):

    git worktree add /tmp/photon-8bd6c58 8bd6c58
    git worktree add /tmp/photon-2c4aac9 2c4aac9
    S=$PWD/experiments/2026-11-30-attention-kernel-timed-per-cache/decode_speed_of_a_checkout.py
    (cd /tmp/photon-8bd6c58 && PYTHONPATH=. python $S old 1)
    (cd /tmp/photon-2c4aac9 && PYTHONPATH=. python $S new 1)   # then new 2, old 2

(Then it sat at docs/bench_memory/s8/tree_ab.py and needed /work/old and a sitecustomize.py
in /work/snapboot that dropped the editable install's import hook; the checkouts above need
neither.) Batch 256 (vanilla 52, as the benchmark), 128-token prompts, 1,024 new tokens,
greedy; the default attention of the tree.
"""

import json
import sys

import torch

from photon.inference.workload import run_workload
from photon.model.lm import build_model

tree, round_ = sys.argv[1], int(sys.argv[2])
for name, mode, batch in [("vanilla-small", "hiergen", 52), ("photon-small", "hiergen", 256),
                          ("photon-small", "recgen", 256),
                          ("photon-small-bounded", "hiergen", 256),
                          ("photon-small-bounded", "recgen", 256)]:
    torch.manual_seed(0)
    model = build_model(name).eval()
    run_workload(model, mode, batch, 128, 32)
    prefill_s, total_s, _ = run_workload(model, mode, batch, 128, 1024)
    print(json.dumps({"tree": tree, "round": round_, "case": f"{name} {mode}", "batch": batch,
                      "tok_s": round(batch * 1024 / (total_s - prefill_s))}), flush=True)
