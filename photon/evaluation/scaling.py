"""Scaling laws: fit L(N, D) = E + A / N^alpha + B / D^beta to training runs, with intervals.

Chinchilla's approach 3 (Hoffmann et al. 2022): the loss of a model of N parameters trained on
D tokens is fitted in log space, log L = LSE(e, a - alpha log N, b - beta log D) with E = exp(e),
A = exp(a), B = exp(b), by minimising a Huber loss of the residuals with L-BFGS from a grid of
starting points (the best fit kept). `bootstrap` refits on resampled runs, so what the fit
predicts (a frontier, where two frontiers cross) comes with an interval; with a handful of
runs per kind the intervals are wide, and they say so.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

HUBER_DELTA = 1e-3  # Chinchilla's


@dataclass(frozen=True)
class ScalingLaw:
    E: float
    A: float
    alpha: float
    B: float
    beta: float

    def loss(self, n: np.ndarray | float, d: np.ndarray | float) -> np.ndarray | float:
        """Predicted loss of N parameters trained on D tokens."""
        return self.E + self.A / np.power(n, self.alpha) + self.B / np.power(d, self.beta)


def _huber(params: torch.Tensor, log_n: torch.Tensor, log_d: torch.Tensor,
           log_loss: torch.Tensor) -> torch.Tensor:
    """The Huber loss of the law `params` (e, a, alpha, b, beta) in log space."""
    e, a, alpha, b, beta = params
    predicted = torch.logsumexp(torch.stack(
        (e.expand_as(log_n), a - alpha * log_n, b - beta * log_d)), dim=0)
    return torch.nn.functional.huber_loss(predicted, log_loss, delta=HUBER_DELTA,
                                          reduction="sum")


def _fit_from(start: Sequence[float], *data: torch.Tensor) -> tuple[float, torch.Tensor]:
    params = torch.tensor(start, dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([params], max_iter=200, tolerance_grad=1e-12,
                                  tolerance_change=1e-14, line_search_fn="strong_wolfe")

    def objective() -> torch.Tensor:
        optimizer.zero_grad()
        value = _huber(params, *data)
        value.backward()
        return value

    optimizer.step(objective)
    with torch.no_grad():
        return float(_huber(params, *data)), params.detach()


def fit(n: Sequence[float], d: Sequence[float], loss: Sequence[float]) -> ScalingLaw:
    """The law that fits runs of `n` parameters, `d` tokens and final `loss` best, from a grid
    of 16 starting points (E below the lowest loss, exponents 0.3 and 0.8, coefficients e^2
    and e^8)."""
    if len(n) < 5:
        raise ValueError(f"a five-parameter law needs at least 5 runs, got {len(n)}")
    log_n, log_d, log_loss = (torch.tensor(np.log(x), dtype=torch.float64)
                              for x in (n, d, loss))
    floor = math.log(min(loss))
    grid = itertools.product((floor - 0.5,), (2.0, 8.0), (0.3, 0.8), (2.0, 8.0), (0.3, 0.8))
    best_value, best = math.inf, None
    for start in grid:
        value, params = _fit_from(start, log_n, log_d, log_loss)
        if math.isfinite(value) and value < best_value:
            best_value, best = value, params
    e, a, alpha, b, beta = best.tolist()
    return ScalingLaw(math.exp(e), math.exp(a), alpha, math.exp(b), beta)


def bootstrap(n: Sequence[float], d: Sequence[float], loss: Sequence[float],
              resamples: int = 100, seed: int = 0) -> list[ScalingLaw]:
    """Laws fitted to `resamples` resamplings (with replacement) of the runs; a resampling
    that holds fewer than five distinct runs is drawn again."""
    rng = np.random.default_rng(seed)
    n, d, loss = map(np.asarray, (n, d, loss))
    laws = []
    while len(laws) < resamples:
        pick = rng.integers(0, len(n), len(n))
        if len(set(pick.tolist())) >= 5:
            laws.append(fit(n[pick], d[pick], loss[pick]))
    return laws


def interval(values: Sequence[float], level: float = 0.9) -> tuple[float, float]:
    """The central `level` interval of bootstrap values."""
    lo, hi = np.quantile(np.asarray(values), [(1 - level) / 2, (1 + level) / 2])
    return float(lo), float(hi)
