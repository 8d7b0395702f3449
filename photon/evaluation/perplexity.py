"""Bits per byte and perplexity of a model on a text, free of truncation bias.

The token stream (after an end-of-text token that stands for "start of document", when the
tokenizer has one) is scored in windows of the model's context that overlap by
`window - stride` tokens: every token is scored exactly once, the first window's tokens with
whatever precedes them, every later token with at least `window - stride` tokens of context.
Bits per byte divide by the UTF-8 bytes of the scored tokens, so models with different
tokenizers compare fairly.

Under RecGen (PHOTON with L >= 2) each window's unscored context is the prompt: its complete
meta-contexts are encoded, and the scored tokens are predicted with the top stream advanced by
the decoder's own reconstructions (`photon.inference.scoring.sequential_logits`). The first
window's context is scored as a prompt is, by the encoder (HierGen), as there is nothing
before it.

`window_nll` is the per-window scoring that `photon.evaluation.positions` (bits per byte by
position in the window) shares.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass

import torch
from torch import Tensor
from tqdm import tqdm

from photon.errors import InputError
from photon.inference.modes import check_mode
from photon.inference.scoring import sequential_logits
from photon.model.lm import Model, PhotonLM, token_nll
from photon.progress import progress_bar


@dataclass
class EvalResult:
    bpb: float
    ppl: float
    tokens: int
    bytes: int
    nll_nats: float
    mode: str
    window: int
    stride: int

    def to_dict(self) -> dict:
        return asdict(self)


def windows(n_tokens: int, window: int, stride: int) -> list[tuple[int, int, int]]:
    """(start, end, first scored position) of each window; every position >= 1 once."""
    spans, scored_to = [], 1
    for start in range(0, n_tokens, stride):
        end = min(start + window, n_tokens)
        if end > scored_to:
            spans.append((start, end, scored_to))
            scored_to = end
        if end == n_tokens:
            break
    return spans


def mode_logits(model: Model, ids: Tensor, prompt_len: int, mode: str,
                decoded: bool = False) -> Tensor:
    """Teacher-forced logits [B, T, V] of ids [B, T] (`logits[:, i]` predicts token i+1) as
    `mode` predicts them after a prompt of `prompt_len` tokens: the forward pass (HierGen and
    the flat model, whatever the prompt), or RecGen's sequential likelihood (PHOTON, L >= 2).
    `decoded` computes HierGen's through the cached decoding path too (PHOTON), which shows
    that what generation samples from is what the forward pass scores."""
    if isinstance(model, PhotonLM) and (mode == "recgen" or decoded):
        return sequential_logits(model, ids, prompt_len, mode)
    return model(ids).logits


def window_nll(model: Model, ids: Tensor, starts: Sequence[int], length: int,
               prompt_len: int, mode: str, decoded: bool = False, batch_size: int = 8,
               bar: tqdm | None = None) -> Iterator[tuple[Tensor, Tensor]]:
    """The windows ids[s:s + length] of a token stream ids [N] for each of `starts`,
    `batch_size` per forward pass: (windows [b, length], next-token NLL [b, length - 1] in
    nats, float64), both on the CPU; NLL[:, i] is token i+1's, as `mode_logits` predicts it
    after a prompt of `prompt_len` tokens."""
    device = next(model.parameters()).device
    for i in range(0, len(starts), batch_size):
        batch = torch.stack([ids[s:s + length] for s in starts[i:i + batch_size]])
        on_device = batch.to(device)
        nll = token_nll(mode_logits(model, on_device, prompt_len, mode, decoded), on_device)
        if bar is not None:
            bar.update(len(batch))
        yield batch, nll.double().cpu()


def check_sizes(window: int, batch_size: int) -> None:
    """A clear `InputError` for a window or a batch size no evaluation can use."""
    if batch_size < 1:
        raise InputError(f"batch_size must be positive, got {batch_size}")
    if window < 2:
        raise InputError(f"window must be at least 2 tokens, got {window}")


@torch.no_grad()
def evaluate_tokens(model: Model, tokens: list[int], token_bytes: list[int],
                    mode: str = "hiergen", window: int | None = None, stride: int | None = None,
                    batch_size: int = 8, progress: bool = False,
                    decoded: bool = False) -> EvalResult:
    """Score `tokens` (position 0 is context only) in overlapping windows; `decoded`: see
    `mode_logits`."""
    check_mode(model.config, mode)
    if len(tokens) < 2:
        raise InputError("the text is too short to score: it needs at least 2 tokens")
    window = model.config.max_seq_len if window is None else window
    check_sizes(window, batch_size)
    stride = window // 2 if stride is None else stride
    if not 0 < stride < window:
        raise InputError(f"stride must be in [1, window - 1 = {window - 1}], got {stride}")
    ids = torch.tensor(tokens, dtype=torch.long)
    spans = windows(len(tokens), window, stride)
    # Windows of one shape (the same length and scored offset) are batched together.
    groups: dict[tuple[int, int], list[int]] = {}
    for start, end, first in spans:
        groups.setdefault((end - start, first - start), []).append(start)
    total = torch.zeros((), dtype=torch.float64)
    bar = progress_bar(total=len(spans), desc=f"eval ({mode})", unit="window",
                       show=progress)
    for (length, offset), starts in groups.items():
        # The prompt is the unscored context; the very first window has none before its
        # scored tokens, so it keeps a full window's worth of context as its prompt.
        prompt_len = max(offset if offset > 1 else length - stride, 0)
        for _, nll in window_nll(model, ids, starts, length, prompt_len, mode, decoded,
                                 batch_size, bar):
            total += nll[:, offset - 1:].sum()
    bar.close()
    n_scored = len(tokens) - 1
    n_bytes = sum(token_bytes[t] for t in tokens[1:])
    nll = total.item()
    return EvalResult(bpb=nll / math.log(2) / max(n_bytes, 1), ppl=math.exp(nll / n_scored),
                      tokens=n_scored, bytes=n_bytes, nll_nats=nll, mode=mode, window=window,
                      stride=stride)


def evaluate_text(model: Model, tokenizer, text: str, **kwargs) -> EvalResult:
    """Bits per byte and perplexity of `text`; keyword arguments as `evaluate_tokens`."""
    tokens = tokenizer.encode(text)
    if tokenizer.eos_id is not None:
        tokens = [tokenizer.eos_id, *tokens]  # start of document: every text token scored
    return evaluate_tokens(model, tokens, tokenizer.token_bytes(), **kwargs)
