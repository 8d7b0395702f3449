"""Scoring a text the way generation sees it: teacher-forced logits computed through the
decoders, meta-context by meta-context (RecGen's likelihood, docs/PHOTON.md §5.3, and the
proof that HierGen's decoding is its forward pass)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from photon.errors import InputError
from photon.inference.decoders import PhotonDecoder
from photon.model.lm import PhotonLM, check_token_ids


@torch.no_grad()
def sequential_logits(model: PhotonLM, input_ids: Tensor, prompt_len: int = 0,
                      mode: str = "recgen") -> Tensor:
    """Teacher-forced logits [B, T, V] (forward's convention: [:, i] predicts token i+1) as
    generation computes them after a prompt of `prompt_len` tokens.

    The prompt's complete meta-contexts are encoded; from then on the top stream advances
    meta-context by meta-context as `mode` does while generating: re-encoding the true
    tokens (hiergen, which equals the parallel forward pass) or feeding the decoder's own
    reconstructions (recgen: its exact likelihood, which the paper does not report).
    """
    check_token_ids(input_ids, model.config.vocab_size)
    B, T = input_ids.shape
    if not 0 <= prompt_len <= T:
        raise InputError(f"prompt_len must be in [0, {T}], got {prompt_len}")
    P = model.config.meta_len
    first = prompt_len // P * P  # first position decoded one meta-context at a time
    decoder = PhotonDecoder(model, B, T + P, mode)
    decoder.prefill(input_ids[:, :first], torch.full((B,), first))
    padded = F.pad(input_ids, (0, P))
    preds = [decoder.step(None, padded[:, g * P:(g + 1) * P])[2]
             for g in range(first // P, T // P + 1)]  # meta-contexts holding first..T
    preds = torch.cat(preds, dim=1)  # preds[:, p - first] predicts token p
    start = max(first, 1)
    # Predictions of tokens before `start` are the same in every mode: the parallel pass
    # over that prefix alone gives them (padding never changes a logit).
    head = model(input_ids[:, :start - 1]).logits if start > 1 else preds[:, :0]
    return torch.cat((head, preds[:, start - first:T + 1 - first]), dim=1)
