"""fae.evaluation.intervals: Wilson and Student-t intervals against hand values, the bootstrap FID's
resample arithmetic against the library's FID, and its coverage by simulation."""
from __future__ import annotations

import numpy as np
import pytest

from fae.evaluation.fid import frechet_distance
from fae.evaluation.intervals import ResampledFid, bootstrap_fid, pivotal_interval, seed_interval, wilson

Z95 = 1.959963984540054  # standard normal 97.5% quantile
T95_DF2 = 0.95 / np.sqrt(2 * 0.975 * 0.025)  # Student t, 2 d.o.f., closed form (2p-1)/sqrt(2p(1-p)): 4.3027


@pytest.mark.parametrize("successes, n, expected", [
    (0, 10, (0.0, 0.2775)),
    (10, 10, (0.7225, 1.0)),
    (45, 100, (0.3561, 0.5476)),
    (1, 3, (0.0615, 0.7923)),
])
def test_wilson_matches_hand_values(successes, n, expected):
    lo, hi = wilson(successes, n)
    assert (round(lo, 4), round(hi, 4)) == expected


def test_wilson_closed_form_and_level():
    """Centre (p + z^2/2n) / (1 + z^2/n), half width z sqrt(p(1-p)/n + z^2/4n^2) / (1 + z^2/n)."""
    p, n = 0.3, 50
    denom = 1 + Z95 ** 2 / n
    centre = (p + Z95 ** 2 / (2 * n)) / denom
    half = Z95 * np.sqrt(p * (1 - p) / n + Z95 ** 2 / (4 * n * n)) / denom
    assert wilson(15, 50) == pytest.approx((centre - half, centre + half), rel=1e-12)
    narrow, wide = wilson(15, 50, level=0.5), wilson(15, 50, level=0.99)
    assert wide[0] < centre - half < narrow[0] < narrow[1] < centre + half < wide[1]


def test_wilson_rejects_bad_counts():
    with pytest.raises(ValueError, match="11/10"):
        wilson(11, 10)
    with pytest.raises(ValueError):
        wilson(0, 0)


def test_seed_interval_is_student_t():
    """mean 13, sd sqrt(13), t(0.975, 2) = 4.3027: 13 -+ 4.3027 * 3.6056 / sqrt(3)."""
    lo, hi = seed_interval([10.0, 12.0, 17.0])
    half = T95_DF2 * np.sqrt(13.0) / np.sqrt(3)
    assert (lo, hi) == pytest.approx((13 - half, 13 + half), rel=1e-12)
    assert (round(lo, 4), round(hi, 4)) == (4.0433, 21.9567)
    assert seed_interval([2.0, 2.0]) == (2.0, 2.0)
    with pytest.raises(ValueError, match="at least 2"):
        seed_interval([1.0])


def _stats(rng: np.random.Generator, d: int) -> tuple[np.ndarray, np.ndarray]:
    a = rng.normal(size=(d, d))
    return rng.normal(size=d), a @ a.T / d + 0.1 * np.eye(d)


@pytest.mark.parametrize("n, d", [(40, 16), (12, 16), (60, 120)])  # d x d route, then the n x n route
def test_resampled_fid_matches_library_fid(n, d):
    rng = np.random.default_rng(n)
    x = rng.normal(size=(n, d)) * rng.uniform(0.5, 2.0, size=d) + 1.0
    mu_r, sigma_r = _stats(rng, d)
    resampler = ResampledFid(x, mu_r, sigma_r)
    assert resampler.gram_route == (n < d)
    rows = np.vstack([np.arange(n), rng.integers(0, n, size=(4, n))])  # itself, then 4 resamples
    expected = [frechet_distance(x[r].mean(0), np.cov(x[r], rowvar=False), mu_r, sigma_r, "eigh") for r in rows]
    np.testing.assert_allclose(resampler.fid(rows), expected, rtol=1e-6)


def test_bootstrap_fid_is_deterministic_and_brackets_the_point():
    rng = np.random.default_rng(0)
    mu_r, sigma_r = _stats(rng, 16)
    x = rng.normal(size=(30, 16)) + 0.5
    point = frechet_distance(x.mean(0), np.cov(x, rowvar=False), mu_r, sigma_r)
    lo, hi = bootstrap_fid(x, mu_r, sigma_r, resamples=300, seed=1)
    assert lo < point < hi
    assert bootstrap_fid(x, mu_r, sigma_r, resamples=300, seed=1) == (lo, hi)
    lo_50, hi_50 = bootstrap_fid(x, mu_r, sigma_r, resamples=300, seed=1, level=0.5)
    assert lo < lo_50 < hi_50 < hi
    replicates = ResampledFid(x, mu_r, sigma_r).fid(np.random.default_rng(1).integers(0, 30, size=(300, 30)))
    assert replicates.mean() > point  # resampling with duplicates adds bias: what the centring removes
    assert (lo, hi) == pytest.approx(pivotal_interval(point, replicates), rel=1e-9)


def test_pivotal_interval_mirrors_the_spread_around_the_point():
    """Replicates 0..100 (mean 50, 2.5% / 97.5% quantiles 2.5 / 97.5) around a point of 60."""
    assert pivotal_interval(60.0, np.arange(101.0)) == pytest.approx((60 - 47.5, 60 + 47.5))
    assert pivotal_interval(10.0, np.arange(101.0)) == (0.0, pytest.approx(57.5))  # FID is >= 0


def _coverage(n: int, d: int, shift: float, sets: int = 100, resamples: int = 150) -> tuple[float, float]:
    """Share of sample sets whose 95% interval covers the mean FID at n: (bootstrap_fid's pivotal
    interval, the plain percentile interval). Samples ~ N(shift, 1.3 S_r), reference N(0, S_r)."""
    rng = np.random.default_rng(d * 1000 + n)
    _, sigma_r = _stats(rng, d)
    mu_r = np.zeros(d)
    chol = np.linalg.cholesky(1.3 * sigma_r)

    def draw() -> np.ndarray:
        return rng.normal(size=(n, d)) @ chol.T + shift

    target = np.mean([ResampledFid(draw(), mu_r, sigma_r).fid(np.arange(n)[None])[0] for _ in range(1500)])
    pivotal = percentile = 0
    for _ in range(sets):
        resampler = ResampledFid(draw(), mu_r, sigma_r)
        point = resampler.fid(np.arange(n)[None])[0]
        replicates = resampler.fid(rng.integers(0, n, size=(resamples, n)))
        lo, hi = pivotal_interval(point, replicates)
        pivotal += lo <= target <= hi
        q_lo, q_hi = np.quantile(replicates, [0.025, 0.975])
        percentile += q_lo <= target <= q_hi
    return pivotal / sets, percentile / sets


@pytest.mark.parametrize("n, d, shift", [(64, 16, 0.6), (12, 16, 1.0)])  # d x d route, n x n route
def test_bootstrap_fid_covers_the_mean_fid_at_n(n, d, shift):
    """Samples differ from the reference: the pivotal interval covers E[FID_n] near 95% of the
    time; the percentile interval, sitting on the resamples' extra bias, clearly does not."""
    pivotal, percentile = _coverage(n, d, shift)
    assert 0.88 <= pivotal <= 0.99, pivotal
    assert percentile < 0.85, percentile


def test_bootstrap_fid_is_conservative_at_the_floor():
    """Samples from (almost) the reference distribution: FID is all small-n bias; the interval
    over-covers there (never the other way, which would make false verdicts)."""
    pivotal, percentile = _coverage(30, 16, shift=0.0)
    assert pivotal >= 0.95, pivotal
    assert percentile < 0.5, percentile
