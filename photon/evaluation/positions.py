"""Bits per byte by position in the window: what a model gains from longer context.

Every document (its token ids after the start-of-document token, when the tokenizer has one)
is cut, from its start, into consecutive windows of `window` tokens that share one token:
window j holds document tokens j(w-1) .. j(w-1) + w-1. The prediction at window position p
(p = 0 .. w-2) is that of window token p+1 with window tokens 0..p in view and nothing
before them: exactly p+1 tokens of context from the same document (in a document's first
window, the start token and p text tokens). Every token a window holds is scored once.

Documents shorter than one window are skipped, and the tail of a document that does not fill a
whole window is left out, so every position is averaged over the same windows: buckets of
positions differ only in how much context their predictions had.

All of a document's windows are scored, not only its first: a long document gives many (a
40,000-token play, 19 at 2,048 tokens), and most of them start mid-document, where the text is
like the rest of it; a document's first tokens (titles, headers) are not, and first windows
alone would mix that into the earliest positions.

Under RecGen no part of a window is a prompt: the whole window is decoded as generation would
decode it from its first token.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from photon.data.tokenizer import Tokenizer
from photon.errors import InputError
from photon.evaluation.perplexity import check_sizes, window_nll
from photon.inference.modes import check_mode
from photon.model.lm import Model
from photon.progress import progress_bar


@dataclass
class Bucket:
    """The predictions at window positions start .. end-1 of every window, summed."""

    start: int
    end: int
    tokens: int
    bytes: int
    nll_nats: float

    @property
    def bpb(self) -> float:
        return self.nll_nats / math.log(2) / max(self.bytes, 1)

    def to_dict(self) -> dict:
        return {"positions": f"{self.start}-{self.end - 1}", "start": self.start,
                "end": self.end, "tokens": self.tokens, "bytes": self.bytes,
                "nll_nats": self.nll_nats, "bpb": self.bpb}


@dataclass
class PositionResult:
    """Next-token NLL (nats) and text bytes at each window position p = 0 .. window-2,
    summed over the `windows` windows scored (one prediction each per position)."""

    nll_nats: list[float]
    bytes: list[int]
    windows: int
    documents: int  # documents scored
    skipped: int  # documents shorter than the window
    mode: str
    window: int

    def bucket(self, start: int, end: int) -> Bucket:
        """Positions start .. end-1 summed."""
        return Bucket(start, end, self.windows * (end - start), sum(self.bytes[start:end]),
                      math.fsum(self.nll_nats[start:end]))

    def buckets(self, boundaries: Sequence[int] | None = None) -> list[Bucket]:
        """Consecutive buckets covering every position (see `bucket_starts`)."""
        starts = bucket_starts(self.window, boundaries)
        ends = [*starts[1:], self.window - 1]
        return [self.bucket(a, b) for a, b in zip(starts, ends, strict=True)]

    def to_dict(self, boundaries: Sequence[int] | None = None) -> dict:
        """The overall numbers (the keys of `EvalResult` where they mean the same) and the
        buckets of `boundaries`."""
        whole = self.bucket(0, self.window - 1)
        return {"bpb": whole.bpb, "ppl": math.exp(whole.nll_nats / whole.tokens),
                "tokens": whole.tokens, "bytes": whole.bytes, "nll_nats": whole.nll_nats,
                "mode": self.mode, "window": self.window, "windows": self.windows,
                "documents": self.documents, "documents_skipped": self.skipped,
                "buckets": [b.to_dict() for b in self.buckets(boundaries)]}


def bucket_starts(window: int, boundaries: Sequence[int] | None = None) -> list[int]:
    """First positions of the buckets: 0 and `boundaries`, increasing positions of the
    0 .. window-2 a window scores (default window/8 and window/2: 0-255, 256-1023 and
    1024-2046 for a window of 2,048)."""
    last = window - 2
    if boundaries is None:
        return sorted({0, *(b for b in (window // 8, window // 2) if b <= last)})
    cuts = list(boundaries)
    if cuts != sorted(set(cuts)) or not all(0 <= b <= last for b in cuts):
        raise InputError(f"bucket boundaries must be increasing positions in 0..{last} (a "
                         f"window of {window} tokens scores positions 0 to {last}), got "
                         f"{','.join(map(str, cuts))}")
    return sorted({0, *cuts})


def text_documents(tokenizer: Tokenizer, texts: Iterable[str]) -> Iterator[list[int]]:
    """Each text's token ids after the start-of-document token when the tokenizer has one
    (position 0 then predicts the first text token)."""
    start = [] if tokenizer.eos_id is None else [tokenizer.eos_id]
    for text in texts:
        yield [*start, *tokenizer.encode(text)]


@dataclass
class DocumentWindows:
    """Documents cut into consecutive windows that share one token (the module doc): the kept
    part of each document concatenated (`ids`), the start of every window in it, and how many
    documents gave windows and how many were shorter than one."""

    ids: Tensor
    starts: list[int]
    documents: int
    skipped: int


def document_windows(documents: Iterable[Sequence[int]], window: int) -> DocumentWindows:
    """Every whole window of every document (token ids, the start-of-document token first),
    from its start; an error when no document fills one."""
    step = window - 1  # consecutive windows share one token: each is scored once
    pieces, starts, used, skipped = [], [], 0, 0
    for doc in documents:
        kept = (len(doc) - 1) // step * step + 1
        if kept < window:
            skipped += 1
            continue
        pieces.append(torch.from_numpy(np.asarray(doc[:kept], dtype=np.int64)))
        starts += range(used, used + kept - 1, step)
        used += kept
    if not starts:
        raise InputError(f"no document fills a window of {window} tokens (the start-of-"
                         f"document token included; {skipped} shorter skipped): use a "
                         "smaller window")
    return DocumentWindows(torch.cat(pieces), starts, len(pieces), skipped)


@torch.no_grad()
def evaluate_positions(model: Model, documents: Iterable[Sequence[int]],
                       token_bytes: Sequence[int], mode: str = "hiergen",
                       window: int | None = None, batch_size: int = 8,
                       progress: bool = False, decoded: bool = False) -> PositionResult:
    """Score each document (token ids, the start-of-document token first: see
    `text_documents`, `photon.data.shards.stream_documents`) in consecutive windows from its
    start, and sum the NLL and bytes by window position. `window` defaults to the model's
    training context; `decoded`: see `photon.evaluation.perplexity.mode_logits`."""
    check_mode(model.config, mode)
    window = model.config.max_seq_len if window is None else window
    check_sizes(window, batch_size)
    cut = document_windows(documents, window)
    sizes = torch.tensor(token_bytes)
    nll = torch.zeros(window - 1, dtype=torch.float64)
    n_bytes = torch.zeros(window - 1, dtype=torch.long)
    bar = progress_bar(total=len(cut.starts), desc=f"eval by position ({mode})",
                       unit="window", show=progress)
    for batch, batch_nll in window_nll(model, cut.ids, cut.starts, window, 0, mode, decoded,
                                       batch_size, bar):
        nll += batch_nll.sum(0)
        n_bytes += sizes[batch[:, 1:]].sum(0)
    bar.close()
    return PositionResult(nll.tolist(), n_bytes.tolist(), len(cut.starts), cut.documents,
                          cut.skipped, mode, window)
