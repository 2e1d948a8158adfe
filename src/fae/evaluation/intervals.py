"""95% intervals for the numbers a verdict compares: FID (bootstrap), class accuracy (Wilson) and
the seed-to-seed spread of a metric (Student t).

**FID bootstrap.** The sample features are resampled with replacement; the reference statistics
stay fixed (they come from a large real set shared by every arm, so their noise is common to a
comparison). The interval covers the *mean FID at this sample count n*, ``E[FID_n]``, not the FID of
infinitely many samples: FID is biased upward at small n (the sample covariance's noise adds to the
trace term); arms compared at the same n carry comparable bias, and the report compares them there.
A resample holds only ~63% distinct rows, so its FID is biased upward again, roughly by as much as
``FID_n`` lies above ``FID_inf``: the bootstrap distribution sits too high, and the plain percentile
interval (and the basic interval ``2 FID - q``, which mirrors that bias downward) miss the target
most of the time when the bias is comparable to the spread (the simulation in
``tests/test_intervals.py``: 0.6-0.8 coverage, far less near FID 0). ``FID`` itself is the unbiased
estimate of ``E[FID_n]``, so we keep it as the centre and take only the *shape* from the bootstrap,
recentred on its own mean: the pivotal interval around the bias-corrected centre,
``[FID - (q_hi - m*), FID - (q_lo - m*)]`` with ``q_lo, q_hi`` the bootstrap quantiles and ``m*``
their mean. Its simulated coverage is 0.93-0.97 when the sample distribution differs from the
reference; when the two nearly agree (FID at its small-n floor) it over-covers (~1.0: the bootstrap
spread is inflated there), which errs towards "inside the noise", never towards a false verdict.

**Fast, exact resamples.** With ``Y`` the sample features centred on their own mean and a resample
given by its distinct rows ``i`` and their counts ``w_i`` (sum n), its mean is ``ybar = sum w_i y_i / n``
and, with ``G = Y S_r Y^T`` and ``K = Y Y^T`` computed once,
``tr S_x = sum_i w_i |y_i - ybar|^2 / (n-1)`` (from ``K``) and
``tr (S_r^(1/2) S_x S_r^(1/2))^(1/2) = sum sqrt(eig(W^(1/2) Gc W^(1/2) / (n-1)))``, ``Gc`` the Gram
``G`` centred on ``ybar``: the nonzero eigenvalues of ``A^T A`` and ``A A^T`` agree for
``A = W^(1/2) (Y - ybar) S_r^(1/2)``. Each resample is one eigvalsh of its ~0.63 n distinct rows
(about 160 x 160 for n = 250 instead of 2048 x 2048). With ``n >= d`` the d x d route is used
instead: ``eig(S_r^(1/2) S_x S_r^(1/2))`` with the root computed once. Both agree with
``fae.evaluation.fid.frechet_distance`` to 1e-8 relative.
"""
from __future__ import annotations

import contextlib
import math
from collections.abc import Sequence

import numpy as np
import torch
from scipy import stats

from fae.distributed import torch_threads

BATCH_ELEMENTS = 2 ** 23  # matrix entries of one batched eigvalsh: ~64 MB of float64


def _psd_root(sigma: torch.Tensor) -> torch.Tensor:
    """Symmetric square root of a PSD matrix (eigh; rounding below zero clipped)."""
    values, vectors = torch.linalg.eigh((sigma + sigma.T) / 2)
    return (vectors * values.clamp_min(0).sqrt()) @ vectors.T


def _sum_sqrt_eigs(matrices: torch.Tensor) -> torch.Tensor:
    """``sum sqrt(eig)`` of each symmetric PSD matrix of a stack [B, m, m] -> [B]."""
    values = torch.linalg.eigvalsh((matrices + matrices.transpose(1, 2)) / 2)  # [B, m]
    return values.clamp_min(0).sqrt().sum(dim=1)


def _distinct_rows(rows: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Each resample [B, n] as its distinct rows and their counts, padded to the batch's largest
    distinct count with count-0 rows: (index [B, m], weight [B, m] float64)."""
    batch = rows.shape[0]
    flat = (rows + n * torch.arange(batch, device=rows.device)[:, None]).reshape(-1)
    counts = torch.bincount(flat, minlength=batch * n).reshape(batch, n)  # [B, n]
    m = int((counts > 0).sum(dim=1).max())
    order = torch.argsort((counts == 0).to(torch.int8), dim=1, stable=True)[:, :m]  # picked rows first
    return order, counts.gather(1, order).to(torch.float64)


class ResampledFid:
    """FID of resamples of one sample feature set against fixed reference statistics.

    ``fid(rows)`` takes index arrays [B, n] (rows of ``features``, repeats allowed) and returns the
    B FIDs; ``rows = arange(n)[None]`` gives the sample set's own FID. ``device``: where the float64
    algebra runs (a GPU makes 50K-sample resamples, each a 2048-d covariance of all rows, cheap).
    """

    def __init__(self, features: np.ndarray, ref_mu: np.ndarray, ref_sigma: np.ndarray,
                 device: str | torch.device = "cpu"):
        self.device = torch.device(device)
        x = torch.as_tensor(np.asarray(features), dtype=torch.float64, device=self.device)  # [n, d]
        mu_r = torch.as_tensor(np.asarray(ref_mu), dtype=torch.float64, device=self.device)  # [d]
        sigma_r = torch.as_tensor(np.asarray(ref_sigma), dtype=torch.float64, device=self.device)  # [d, d]
        if x.ndim != 2 or x.shape[0] < 2 or mu_r.shape != x.shape[1:] or sigma_r.shape != (x.shape[1],) * 2:
            raise ValueError(f"bootstrap_fid needs features [n >= 2, d] with ref_mu [d] and ref_sigma [d, d]; "
                             f"got {tuple(x.shape)}, {tuple(mu_r.shape)}, {tuple(sigma_r.shape)}")
        self.n, self.d = x.shape
        centre = x.mean(dim=0)
        self.y = x - centre  # [n, d]; the covariance terms do not see the shift
        offset = centre - mu_r  # [d]: a resample's mean - mu_r = offset + its mean of y
        self.offset_sq = float(offset @ offset)
        self.offset_proj = self.y @ offset  # [n]
        self.trace_ref = float(torch.trace(sigma_r))
        self.gram_route = self.n < self.d
        if self.gram_route:
            self.gram = self.y @ self.y.T  # [n, n]  K
            self.ref_gram = self.y @ sigma_r @ self.y.T  # [n, n]  G
        else:
            self.ref_root = _psd_root(sigma_r)  # [d, d]

    def fid(self, rows: np.ndarray) -> np.ndarray:
        """FIDs [B] of the resamples ``features[rows[b]]``, batched to bound memory."""
        rows = torch.as_tensor(np.asarray(rows), dtype=torch.long, device=self.device)
        per_matrix = self.n * self.n if self.gram_route else self.n * self.d + self.d * self.d
        step = max(1, BATCH_ELEMENTS // per_matrix)
        # many small eigen-solves on a CPU: threads only spin (30x slower under load); one large
        # covariance per resample (n >= d) is one matrix product that threads do speed up
        one_thread = self.gram_route and self.device.type == "cpu"
        with torch_threads(1) if one_thread else contextlib.nullcontext():
            parts = [self._fid_batch(rows[i:i + step]) for i in range(0, rows.shape[0], step)]
        return torch.cat(parts).cpu().numpy()

    def _fid_batch(self, rows: torch.Tensor) -> torch.Tensor:
        if self.gram_route:
            mean_shift, ybar_sq, trace_x, trace_root = self._gram_terms(rows)
        else:
            mean_shift, ybar_sq, trace_x, trace_root = self._covariance_terms(rows)
        mean_term = self.offset_sq + 2 * mean_shift + ybar_sq  # |resample mean - mu_r|^2
        return (mean_term + trace_x + self.trace_ref - 2 * trace_root).clamp_min(0)

    def _gram_terms(self, rows: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """n x n route on distinct rows with counts w: centred Gram ``Gc = G - a 1^T - 1 a^T + c``
        (``a = G w / n``, ``c = w^T G w / n^2``), root term from ``eig(W^(1/2) Gc W^(1/2)) / (n-1)``."""
        index, w = _distinct_rows(rows, self.n)  # [B, m], [B, m]
        pick = (index[:, :, None], index[:, None, :])
        kernel, ref_kernel = self.gram[pick], self.ref_gram[pick]  # [B, m, m]
        mean_shift = (w * self.offset_proj[index]).sum(dim=1) / self.n  # offset . ybar
        k_w = torch.einsum("bij,bj->bi", kernel, w) / self.n  # [B, m]  y_i . ybar
        ybar_sq = (w * k_w).sum(dim=1) / self.n
        centred_diag = kernel.diagonal(dim1=1, dim2=2) - 2 * k_w + ybar_sq[:, None]  # |y_i - ybar|^2
        trace_x = (w * centred_diag).sum(dim=1) / (self.n - 1)
        a = torch.einsum("bij,bj->bi", ref_kernel, w) / self.n  # [B, m]
        c = (w * a).sum(dim=1) / self.n  # [B]
        centred = ref_kernel - a[:, :, None] - a[:, None, :] + c[:, None, None]
        root_w = w.sqrt()
        trace_root = _sum_sqrt_eigs(root_w[:, :, None] * centred * root_w[:, None, :] / (self.n - 1))
        return mean_shift, ybar_sq, trace_x, trace_root

    def _covariance_terms(self, rows: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """d x d route: ``eig(S_r^(1/2) S_x S_r^(1/2))`` with the root computed once."""
        picked = self.y[rows]  # [B, n, d]
        ybar = picked.mean(dim=1)  # [B, d]
        mean_shift = self.offset_proj[rows].mean(dim=1)
        centred = picked - ybar[:, None, :]
        cov = centred.transpose(1, 2) @ centred / (self.n - 1)  # [B, d, d]
        trace_x = cov.diagonal(dim1=1, dim2=2).sum(dim=1)
        trace_root = _sum_sqrt_eigs(self.ref_root @ cov @ self.ref_root)
        return mean_shift, (ybar * ybar).sum(dim=1), trace_x, trace_root


def bootstrap_fid(features: np.ndarray, ref_mu: np.ndarray, ref_sigma: np.ndarray, *,
                  resamples: int = 1000, seed: int = 0, level: float = 0.95,
                  device: str | torch.device = "cpu") -> tuple[float, float]:
    """Bootstrap ``level`` interval [lo, hi] for the mean FID at this sample count (module docstring).

    ``features`` [n, d] are the sample set's Inception features, ``ref_mu`` [d] / ``ref_sigma`` [d, d]
    the fixed reference statistics. Pivotal interval around the bias-corrected centre. The resampled
    rows are drawn on the CPU from ``seed``, so every ``device`` scores the same resamples.
    """
    if resamples < 2 or not 0 < level < 1:
        raise ValueError(f"bootstrap_fid needs resamples >= 2 and 0 < level < 1, got {resamples}, {level}")
    resampler = ResampledFid(features, ref_mu, ref_sigma, device)
    point = float(resampler.fid(np.arange(resampler.n)[None])[0])
    rows = np.random.default_rng(seed).integers(0, resampler.n, size=(resamples, resampler.n))  # [R, n]
    return pivotal_interval(point, resampler.fid(rows), level)


def pivotal_interval(point: float, replicates: np.ndarray, level: float = 0.95) -> tuple[float, float]:
    """``[point - (q_hi - m*), point - (q_lo - m*)]``: the bootstrap replicates' spread around their
    own mean ``m*``, mirrored around ``point`` (their extra resampling bias removed); FID floor 0."""
    alpha = (1 - level) / 2
    q_lo, q_hi = np.quantile(replicates, [alpha, 1 - alpha])
    centre = float(np.mean(replicates))
    return max(point - (float(q_hi) - centre), 0.0), point - (float(q_lo) - centre)


def wilson(successes: int, n: int, level: float = 0.95) -> tuple[float, float]:
    """Wilson score ``level`` interval for a binomial proportion ``successes / n``.

    Unlike the normal (Wald) interval it stays inside [0, 1] and does not collapse at 0 or n.
    """
    if n < 1 or not 0 <= successes <= n or not 0 < level < 1:
        raise ValueError(f"wilson needs 0 <= successes <= n, n >= 1 and 0 < level < 1; "
                         f"got {successes}/{n}, level {level}")
    z = float(stats.norm.ppf((1 + level) / 2))
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(centre - half, 0.0), min(centre + half, 1.0)


def seed_interval(values: Sequence[float], level: float = 0.95) -> tuple[float, float]:
    """Student-t ``level`` interval of the mean of ``values`` (one metric over seeds; needs >= 2)."""
    data = np.asarray(values, np.float64)
    if data.ndim != 1 or data.size < 2 or not 0 < level < 1:
        raise ValueError(f"seed_interval needs at least 2 values and 0 < level < 1; got {data.size}, {level}")
    mean = float(data.mean())
    half = float(stats.t.ppf((1 + level) / 2, data.size - 1)) * float(data.std(ddof=1)) / math.sqrt(data.size)
    return mean - half, mean + half
