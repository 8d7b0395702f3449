"""The experiment behind the "chunk by chunk" numbers (README.md): PhotonDecoder.step replaced by
one that decodes G token chunks of every sequence per call (G = 1 is main's step, G = 4 a
whole meta-context, as at 8bd6c58), greedy, no logits kept. Prints tokens/s (batch 256,
128-token prompts, 1,024 new tokens, two interleaved rounds) and the benchmark's memory per
sample over the cache bytes.

Ran at commit b4b4987. It patches private names of that tree (`PhotonDecoder.step`,
`_advance`, `_known`, `pending`, `cond`), so it runs from a checkout of that commit, where
it sits at docs/bench_memory/s7/chunk_groups.py:

    git worktree add /tmp/photon-b4b4987 b4b4987 && cd /tmp/photon-b4b4987
    PYTHONPATH=. python docs/bench_memory/s7/chunk_groups.py
"""

import torch

from photon.inference import decoders
from photon.inference.workload import memory_profile, run_workload
from photon.model.lm import build_model


def grouped(G: int):
    def step(self, sampler, forced=None, keep_logits=True):
        if self.pending is not None:
            self._advance(self.pending)
        known, forced = self._known(forced)
        B, S = self.cond.shape[:2]
        C = self.model.config.chunk_sizes[0]
        tokens = []
        for g in range(0, S, G):
            part = slice(g * C, (g + G) * C)
            kn, fo = known[:, part].reshape(B * G, C), forced[:, part].reshape(B * G, C)
            def choose(j, logits, kn=kn, fo=fo):
                return torch.where(kn[:, j], fo[:, j], sampler(logits))
            cond = self.cond[:, g:g + G].reshape(B * G, 1, -1)
            tokens.append(self.model.decode_token_chunk(cond, choose).view(B, G * C))
        self.pending = torch.cat(tokens, 1)
        return self.pending, ~known, None
    return step


torch.manual_seed(0)
model = build_model("photon-small").eval()
for mode in ("recgen", "hiergen"):
    run_workload(model, mode, 256, 128, 64)
    speed = {}
    for _ in range(2):
        for G in (1, 2, 4):
            decoders.PhotonDecoder.step = grouped(G)
            prefill, total, _ = run_workload(model, mode, 256, 128, 1024)
            speed.setdefault(G, []).append(256 * 1024 / (total - prefill))
    cache = decoders.make_decoder(model, mode, 1, 2176).cache_bytes
    for G in (1, 2, 4):
        decoders.PhotonDecoder.step = grouped(G)
        slope, _ = memory_profile(model, mode, 128, 2048)
        print(f"{mode} G={G}: tokens/s {' '.join(f'{s:,.0f}' for s in speed[G])}, "
              f"mem/cache {slope / cache:.3f}")
