"""Decode tokens/s of one source tree, as JSON lines: run it for two trees in ABBA order to
compare them on this machine (its speed drifts by up to 10 % over minutes).

    PYTHONPATH=/work/snapboot:/work/old python docs/bench_memory/s8/tree_ab.py old 1
    python docs/bench_memory/s8/tree_ab.py new 1   # then new 2, old 2

(/work/old: `git worktree add /work/old 8bd6c58`; /work/snapboot/sitecustomize.py drops
the editable install's import hook so that PYTHONPATH's photon is the one imported.) Batch
256 (vanilla 52, as the benchmark), 128-token prompts, 1,024 new tokens, greedy; the
default attention of the tree.
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
