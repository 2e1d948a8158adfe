"""The paper's ordering vs ours: each claim "arm A beats arm B" judged at the last checkpoint.

A difference counts only when it is larger than the seed-to-seed spread of the main arm (the range
of its final FID, or class accuracy, over the main arm and its seed replicates): then the verdict
is "agrees" or "disagrees"; otherwise "too noisy to tell". The real-vs-real FID floor at the same N
is reported beside it: FIDs near the floor say as much about N as about the generators.
"""
from __future__ import annotations

from typing import Any

from fae.config import to_dict

AGREES, DISAGREES, NOISY = "agrees", "disagrees", "too noisy to tell"

# metric -> +1 when higher is better, -1 when lower is better
METRICS = {"fid": -1, "class_accuracy": +1}


def spread(arms: dict[str, dict[str, Any]], main: str) -> dict[str, Any]:
    """Range of each final metric over the main arm and its seed replicates."""
    group = [a for a in arms.values() if a["name"] == main or a.get("replicate_of") == main]
    out: dict[str, Any] = {"arms": [a["name"] for a in group]}
    for metric in METRICS:
        values = [a["final"][metric] for a in group]
        out[metric] = max(values) - min(values)
    return out


def judge(better: float, worse: float, metric: str, noise: float) -> tuple[str, float]:
    """(verdict, margin): margin > 0 when ``better`` is better, as the paper says."""
    margin = METRICS[metric] * (better - worse)
    if abs(margin) <= noise:
        return NOISY, margin
    return (AGREES if margin > 0 else DISAGREES), margin


def verdicts(claims, arms: dict[str, dict[str, Any]], noise: dict[str, Any]) -> list[dict[str, Any]]:
    rows = []
    for claim in claims:
        row: dict[str, Any] = {"better": claim.better, "worse": claim.worse, "source": claim.source}
        for metric in METRICS:
            a, b = arms[claim.better]["final"][metric], arms[claim.worse]["final"][metric]
            verdict, margin = judge(a, b, metric, noise[metric])
            row[metric] = {"better": a, "worse": b, "margin": margin, "spread": noise[metric], "verdict": verdict}
        row["verdict"] = row["fid"]["verdict"]  # the paper's metric decides
        rows.append(row)
    return rows


def results_record(exp, name: str, results: list[dict[str, Any]], ref, quick: bool, wall_s: float) -> dict[str, Any]:
    """Everything the report shows, as ``results.json`` stores it."""
    arms = {r["name"]: {k: v for k, v in r.items() if k != "status"} for r in results}
    noise = spread(arms, exp.main)
    return {"experiment": name, "title": exp.title, "question": exp.question, "quick": quick,
            "variable": list(exp.variable), "main": exp.main, "seeds": list(exp.seeds),
            "seed_keys": list(exp.seed_keys), "evaluation": to_dict(exp.evaluation),
            "floor": {"fid": ref.floor, "n": exp.evaluation.fid_samples,
                      "reference_images": exp.evaluation.reference_images},
            "judge_real_accuracy": ref.judge_real, "arms": arms, "spread": noise,
            "verdicts": verdicts(exp.claims, arms, noise),
            "status": {r["name"]: r["status"] for r in results}, "total_wall_s": wall_s}
