"""Validation during training: token loss and bits per byte on the held-out tokens.

The validation tokens are cut into non-overlapping windows of the training length, and the
processes of a run (`photon.training.parallel.Distributed`, or any object with the same
`rank`, `world`, `device` and `sum`) split the windows between them and add up the sums.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Protocol

import numpy as np
import torch

from photon.data.shards import ShardedTokens, read_windows
from photon.evaluation.probe import ablation_nll
from photon.model.lm import Model, PhotonLM, token_nll


class Processes(Protocol):
    """The processes that share the work: this one's rank among `world`, its device, and a
    sum of floats over all of them."""

    rank: int
    world: int
    device: torch.device

    def sum(self, values: list[float]) -> list[float]: ...


@torch.no_grad()
def validation_scores(model: Model, tokens: np.ndarray | ShardedTokens, seq_len: int,
                      max_tokens: int, byte_lengths: torch.Tensor,
                      autocast: Callable[[], AbstractContextManager], processes: Processes,
                      ) -> dict[str, float]:
    """Mean token loss (nats) and bits per byte over the first `max_tokens` validation tokens,
    cut into windows of `seq_len`; processes split the windows and add up the sums.

    For PHOTON also `val_swap_delta`: the mean loss increase over the tokens that have a top
    state (meta-contexts g >= 1) when the top states are swapped between the windows of a
    batch. Near zero means the model does not read its hierarchy (see `photon.evaluation.probe`).
    """
    length = min(seq_len, len(tokens))
    batch = max(8192 // length, 2)  # no backward pass: large batches amortise op overhead
    starts = list(range(0, min(len(tokens), max(max_tokens, length)) - length + 1, length))
    hier = isinstance(model, PhotonLM) and length > model.config.meta_len
    first = model.config.meta_len - 1 if hier else 0  # first prediction with a top state
    nats = nbytes = swap = swapped = 0.0
    model.eval()
    for i in range(processes.rank * batch, len(starts), batch * processes.world):
        x = read_windows(tokens, starts[i:i + batch], length).to(processes.device)
        with autocast():
            losses = ablation_nll(model, x, zero=False) if hier else \
                {"base": token_nll(model(x).logits, x)}
        nats += losses["base"].double().sum().item()
        nbytes += byte_lengths[x[:, 1:].cpu()].sum().item()
        if "swap" in losses:
            swap += (losses["swap"] - losses["base"])[:, first:].double().sum().item()
            swapped += losses["base"][:, first:].numel()
    model.train()
    nats, nbytes, swap, swapped = processes.sum([nats, nbytes, swap, swapped])
    count = len(starts) * (length - 1)
    result = {"val_loss": nats / count, "val_bpb": nats / math.log(2) / max(nbytes, 1)}
    if swapped:
        result["val_swap_delta"] = swap / swapped
    return result
