"""Sampling a batch whose rows belong to different requests, and the log-probabilities
of what was chosen.

Every row is sampled with its own request's settings by `make_sampler`, the function
`generate` uses, so a served sequence draws exactly what `generate` draws for it alone:
greedy rows take the argmax; a seeded sequence draws from its own generator (copy i of a
request with seed s uses seed s + i); unseeded rows with the same settings share the
engine's generator and one call.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from photon.inference.sampling import (
    GREEDY_BELOW,
    Sampler,
    check_sampling,
    greedy,
    make_sampler,
    seeded_generator,
)


@dataclass(frozen=True)
class SamplingParams:
    """One request's sampling settings; temperature 0 is greedy."""

    temperature: float = 0.0
    top_p: float | None = None
    top_k: int | None = None
    seed: int | None = None

    def __post_init__(self) -> None:
        # The checks generate makes, on the request's side: a value that would break a
        # decode step never reaches the engine.
        check_sampling(self.temperature, self.top_k, self.top_p, self.seed)

    @property
    def greedy(self) -> bool:
        return self.temperature < GREEDY_BELOW


class BatchSampler:
    """logits [B, ..., V] -> tokens [B, ...], row r sampled as sequence r asks."""

    def __init__(self, device: torch.device, seed: int | None = None) -> None:
        self.device = device
        self.generator = torch.Generator(device=device)
        if seed is None:
            self.generator.seed()
        else:
            self.generator.manual_seed(seed)
        self.groups: list[tuple[Tensor, Sampler]] = []
        self.failed: dict[int, str] = {}  # rows whose sampler failed (the runner clears it)

    def own_sampler(self, params: SamplingParams, copy: int) -> Sampler | None:
        """The sampler of a seeded sequence (copy `copy` of its request), or None."""
        if params.greedy or params.seed is None:
            return None
        generator = seeded_generator(params.seed + copy, self.device)
        return make_sampler(params.temperature, params.top_k, params.top_p, generator)

    def set_rows(self, rows: Sequence[tuple[SamplingParams, Sampler | None]]) -> None:
        """The batch changed: row r now has settings rows[r] (and its own sampler if seeded)."""
        shared: dict[SamplingParams, list[int]] = {}
        self.groups = []
        for r, (params, own) in enumerate(rows):
            if own is not None:
                self.groups.append((torch.tensor([r], device=self.device), own))
            elif not params.greedy:
                shared.setdefault(params, []).append(r)
        for params, members in shared.items():
            sample = make_sampler(params.temperature, params.top_k, params.top_p,
                                  self.generator)
            self.groups.append((torch.tensor(members, device=self.device), sample))

    def __call__(self, logits: Tensor) -> Tensor:
        """Every row's tokens. A group whose sampler fails takes the argmax instead and its
        rows are listed in `failed`, so only their requests are failed, not the batch."""
        tokens = greedy(logits)
        for rows, sample in self.groups:
            try:
                tokens[rows] = sample(logits[rows])
            except Exception as e:  # noqa: BLE001 - any failure is this group's alone
                self.failed.update(dict.fromkeys(rows.tolist(), f"sampling failed: {e}"))
        return tokens


def chosen_logprobs(logits: Tensor, tokens: Tensor, top: int
                    ) -> tuple[Tensor, Tensor | None, Tensor | None]:
    """Log-probabilities under the model (temperature 1, no truncation) of the chosen
    `tokens` [n, P] given `logits` [n, P, V], and the `top` most likely alternatives
    (ids and log-probabilities, [n, P, top]) when top > 0."""
    logp = logits.float().log_softmax(-1)
    chosen = logp.gather(-1, tokens[..., None])[..., 0]
    if top == 0:
        return chosen, None, None
    values, ids = logp.topk(top, dim=-1)
    return chosen, ids, values
