"""Recall in natural text: the loss on tokens that complete a bigram seen earlier in the window.

A token completes a repeated bigram when it and the token before it occurred as a pair earlier
in the same window: predicting it is a copy from the past (what induction heads do), and a
memory that has forgotten that stretch of the window cannot copy. Bits per byte barely see
these tokens among all the others; sliced out, and sliced by how far back the pair's last
occurrence lies, they show how much of its context a model recalls, on the same tokens for
every model and decoding mode. Tokens that complete a new bigram are the reference slice.

The distance of a repeat is counted between the cues: predicting token i+1 after token i, the
bigram (t_i, t_i+1) last occurred as (t_j, t_j+1), j < i, and the model must look back i - j
tokens to find it. Windows are those of `photon.evaluation.positions` (whole windows from each
document's start), so the slices hold the same tokens for every model with the same tokenizer.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from photon.errors import InputError
from photon.evaluation.perplexity import check_sizes, window_nll
from photon.evaluation.positions import document_windows
from photon.inference.modes import check_mode
from photon.model.lm import Model
from photon.progress import progress_bar

BANDS = (1, 32, 256, 1024)  # first distances of the default bands of repeats


def bigram_distances(window: Sequence[int]) -> np.ndarray:
    """[len(window) - 1]: at i, the distance i - j back to the latest j < i whose bigram
    (window[j], window[j+1]) equals (window[i], window[i+1]); 0 where that bigram is new."""
    last: dict[tuple[int, int], int] = {}
    out = np.zeros(max(len(window) - 1, 0), dtype=np.int64)
    for i, pair in enumerate(zip(window[:-1], window[1:], strict=True)):
        j = last.get(pair)
        if j is not None:
            out[i] = i - j
        last[pair] = i
    return out


@dataclass
class Slice:
    """Predictions whose bigram last occurred `first` .. `last` tokens back (both 0 for new
    bigrams), summed."""

    first: int
    last: int
    tokens: int
    bytes: int
    nll_nats: float

    @property
    def name(self) -> str:
        return "new" if self.last == 0 else f"repeat {self.first}-{self.last}"

    @property
    def nats_per_token(self) -> float:
        return self.nll_nats / max(self.tokens, 1)

    @property
    def bpb(self) -> float:
        return self.nll_nats / math.log(2) / max(self.bytes, 1)

    def to_dict(self) -> dict:
        return {"slice": self.name, "first": self.first, "last": self.last,
                "tokens": self.tokens, "bytes": self.bytes, "nll_nats": self.nll_nats,
                "nats_per_token": self.nats_per_token, "bpb": self.bpb}


@dataclass
class RepeatResult:
    """New bigrams, then each band of repeats, over `windows` windows of `window` tokens."""

    slices: list[Slice]
    windows: int
    documents: int
    skipped: int
    mode: str
    window: int

    def to_dict(self) -> dict:
        return {"mode": self.mode, "window": self.window, "windows": self.windows,
                "documents": self.documents, "documents_skipped": self.skipped,
                "slices": [s.to_dict() for s in self.slices]}


def band_edges(window: int, bands: Sequence[int] | None = None) -> list[tuple[int, int]]:
    """(first, last) distance of each band: from each start in `bands` (default `BANDS`, cut
    to the window) to the next start - 1, the last band to window - 2, the farthest repeat a
    window holds."""
    farthest = window - 2
    starts = [b for b in BANDS if b <= farthest] if bands is None else list(bands)
    if not starts or starts != sorted(set(starts)) or starts[0] < 1 or starts[-1] > farthest:
        raise InputError(f"repeat bands must start at increasing distances in 1..{farthest} "
                         f"(a window of {window} tokens), got {','.join(map(str, starts))}")
    return list(zip(starts, [*(s - 1 for s in starts[1:]), farthest], strict=True))


@torch.no_grad()
def evaluate_repeats(model: Model, documents: Iterable[Sequence[int]],
                     token_bytes: Sequence[int], mode: str = "hiergen",
                     window: int | None = None, bands: Sequence[int] | None = None,
                     batch_size: int = 8, progress: bool = False) -> RepeatResult:
    """Score every whole window of each document (token ids, the start-of-document token
    first) and sum the NLL and bytes of the tokens completing a new bigram and of those
    repeating one, by band of distance (`band_edges`)."""
    check_mode(model.config, mode)
    window = model.config.max_seq_len if window is None else window
    check_sizes(window, batch_size)
    edges = band_edges(window, bands)
    cut = document_windows(documents, window)
    sizes = torch.tensor(token_bytes)
    groups = [(0, 0), *edges]
    nll, n_tokens, n_bytes = [0.0] * len(groups), [0] * len(groups), [0] * len(groups)
    bar = progress_bar(total=len(cut.starts), desc=f"repeated bigrams ({mode})",
                       unit="window", show=progress)
    for batch, batch_nll in window_nll(model, cut.ids, cut.starts, window, 0, mode,
                                       batch_size=batch_size, bar=bar):
        distance = torch.from_numpy(np.stack([bigram_distances(w.tolist()) for w in batch]))
        token_sizes = sizes[batch[:, 1:]]
        for g, (first, last) in enumerate(groups):
            mask = (distance >= first) & (distance <= last)
            nll[g] += float(batch_nll[mask].sum())
            n_tokens[g] += int(mask.sum())
            n_bytes[g] += int(token_sizes[mask].sum())
    bar.close()
    slices = [Slice(first, last, n_tokens[g], n_bytes[g], nll[g])
              for g, (first, last) in enumerate(groups)]
    return RepeatResult(slices, len(cut.starts), cut.documents, cut.skipped, mode, window)
