"""How much far context a model uses, on the same tokens: the tokens at positions 1024-2046
of 2,048-token windows from document starts (the validation split), scored with their whole
window before them and with it cut to the last 256-511 tokens (windows of 512 whose second half
is scored). The difference is what the far context is worth, with the tokens held fixed.

    OMP_NUM_THREADS=1 python experiments/2026-12-07-frontier-2k/context_use.py \
        runs/frontier/vanilla-d128-1e14-lr0.002 runs/frontier/bounded-d128-1e14-lr0.002
"""

import json
import math
import sys

import numpy as np
import torch

import photon
from photon.data.shards import load_tokens, stream_documents
from photon.model.lm import token_nll

WINDOW, FIRST, CUT, WINDOWS = 2048, 1024, 256, 48


def windows(tokenizer) -> torch.Tensor:
    """The first WINDOWS windows of WINDOW tokens, from the starts of validation documents."""
    val = np.asarray(load_tokens("data/mix-bpe8192", "val"))
    found = []
    for doc in stream_documents(val, tokenizer.eos_id):
        for start in range(0, len(doc) - WINDOW + 1, WINDOW - 1):
            found.append(np.asarray(doc[start:start + WINDOW], dtype=np.int64))
            if len(found) == WINDOWS:
                return torch.from_numpy(np.stack(found))
    return torch.from_numpy(np.stack(found))


@torch.no_grad()
def score(run: str) -> dict:
    model, tokenizer = photon.load_model(run)
    model.eval()
    ids = windows(tokenizer)
    full = torch.cat([token_nll(model(ids[i:i + 4]).logits, ids[i:i + 4])
                      for i in range(0, len(ids), 4)])[:, FIRST - 1:]  # predicts FIRST..end
    cut = []
    for lo in range(FIRST, WINDOW, CUT):  # targets lo..lo+CUT-1 after CUT..2*CUT-1 tokens
        part = ids[:, lo - CUT:lo + CUT]
        nll = torch.cat([token_nll(model(part[i:i + 8]).logits, part[i:i + 8])
                         for i in range(0, len(part), 8)])
        cut.append(nll[:, CUT - 1:])
    cut = torch.cat(cut, dim=1)[:, :full.shape[1]]
    return {"run": run, "windows": len(ids), "tokens": full.numel(),
            "full_nats": full.mean().item(), "cut_nats": cut.mean().item(),
            "far_context_gain_nats": (cut - full).mean().item(),
            "gain_stderr_nats": ((cut - full).mean(1).std() / math.sqrt(len(ids))).item()}


if __name__ == "__main__":
    torch.set_num_threads(1)
    print(json.dumps([score(run) for run in sys.argv[1:]], indent=1))
