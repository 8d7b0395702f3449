"""The scaling-law fit (Chinchilla's approach 3) recovers a known law, and its bootstrap gives
intervals that hold the truth."""

import numpy as np
import pytest

from photon.evaluation.scaling import ScalingLaw, bootstrap, fit, interval

TRUE = ScalingLaw(E=1.7, A=400.0, alpha=0.34, B=410.0, beta=0.28)


def runs(noise: float = 0.0, seed: int = 0):
    """A ladder of sizes at three budgets of C = 6 N D, as a sweep trains them."""
    n, d = [], []
    for budget in (1e15, 1e16, 1e17):
        for size in (1e6, 3e6, 1e7, 3e7):
            n.append(size)
            d.append(budget / (6 * size))
    n, d = np.array(n), np.array(d)
    loss = TRUE.loss(n, d) * np.exp(np.random.default_rng(seed).normal(0, noise, len(n)))
    return n, d, loss


def test_fit_recovers_a_known_law():
    n, d, loss = runs()
    law = fit(n, d, loss)
    grid_n, grid_d = np.meshgrid(np.geomspace(1e6, 3e7, 5), np.geomspace(1e7, 1e10, 5))
    np.testing.assert_allclose(law.loss(grid_n, grid_d), TRUE.loss(grid_n, grid_d), rtol=1e-3)
    assert law.alpha == pytest.approx(TRUE.alpha, abs=0.02)
    assert law.beta == pytest.approx(TRUE.beta, abs=0.02)


def test_bootstrap_refits_resamples_of_at_least_five_distinct_runs(monkeypatch):
    from photon.evaluation import scaling

    seen = []

    def fake_fit(n, d, loss):
        seen.append(list(zip(n.tolist(), d.tolist(), strict=True)))
        return TRUE

    monkeypatch.setattr(scaling, "fit", fake_fit)
    n, d, loss = runs()
    assert scaling.bootstrap(n[:6], d[:6], loss[:6], resamples=30) == [TRUE] * 30
    assert all(len(picked) == 6 and len(set(picked)) >= 5 for picked in seen)
    assert len({tuple(picked) for picked in seen}) > 20  # resampled, not the same runs
    assert interval(range(101), level=0.9) == pytest.approx((5.0, 95.0))


@pytest.mark.slow
def test_bootstrap_interval_holds_the_truth_and_widens_with_noise():
    n, d, loss = runs(noise=0.01, seed=1)
    at = (1e7, 1e9)
    lo, hi = interval([law.loss(*at) for law in bootstrap(n, d, loss, resamples=20)])
    assert lo <= TRUE.loss(*at) <= hi
    quiet = bootstrap(*runs(noise=0.001, seed=1), resamples=20)
    q_lo, q_hi = interval([law.loss(*at) for law in quiet])
    assert q_hi - q_lo < hi - lo


def test_too_few_runs_are_refused():
    with pytest.raises(ValueError, match="at least 5"):
        fit([1e6, 2e6], [1e9, 1e9], [3.0, 2.9])
