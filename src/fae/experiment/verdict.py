"""The paper's ordering vs ours: each claim "arm A beats arm B" judged at the last checkpoint.

Per claim and metric, each arm's value is the mean over its seed group (its own run and its seed
replicates, ``fae.experiment.config``). Each arm carries two 95% intervals: the *sampling*
interval of its own run (``fid_ci``: bootstrap of the sample features, the reference fixed;
``class_accuracy_ci``: Wilson; ``fae.evaluation.intervals``) and the *seed* interval of its group
(Student t over the group's values). The verdict is "agrees" or "disagrees" only when both pairs of
intervals separate, in the same direction; otherwise it is "inside the noise", and ``decided_by``
says which interval kept it there. With fewer than 2 seeds in a group there is no seed interval and
the verdict is inside the noise; results written before intervals existed (no ``*_ci``) load too,
inside the noise, decided by "no intervals recorded". The real-vs-real FID floor at the same N is
reported beside it: FIDs near the floor say as much about N as about the generators.
"""
from __future__ import annotations

import statistics
from typing import Any

from fae.config import to_dict
from fae.evaluation.intervals import seed_interval

AGREES, DISAGREES, NOISY = "agrees", "disagrees", "inside the noise"
SEPARATE = "sampling and seed intervals separate"
SAMPLING_OVERLAP, SEED_OVERLAP = "sampling intervals overlap", "seed intervals overlap"
BOTH_OVERLAP = "sampling and seed intervals overlap"
OPPOSITE = "sampling and seed intervals separate in opposite directions"
FEW_SEEDS, NO_INTERVALS = "fewer than 2 seeds", "no intervals recorded"

# metric -> +1 when higher is better, -1 when lower is better
METRICS = {"fid": -1, "class_accuracy": +1}
GROUPED = ("fid", "class_accuracy", "bits_per_dim")  # the final metrics a seed group summarises


def group_members(arms: dict[str, dict[str, Any]], base: str) -> list[dict[str, Any]]:
    """Arm ``base`` and its seed replicates, in record order."""
    return [a for a in arms.values() if a["name"] == base or a.get("replicate_of") == base]


def seed_group(members: list[dict[str, Any]], metric: str) -> dict[str, Any]:
    """{"mean", "sd", "values", "interval"} of one final metric over a seed group; sd and interval
    are None with fewer than 2 values."""
    values = [float(a["final"][metric]) for a in members]
    several = len(values) >= 2
    return {"mean": statistics.fmean(values), "sd": statistics.stdev(values) if several else None,
            "values": values, "interval": list(seed_interval(values)) if several else None}


def groups(arms: dict[str, dict[str, Any]]) -> dict[str, dict[str, dict[str, Any]]]:
    """Every declared (non-replicate) arm's seed group, per final metric all its members have."""
    out = {}
    for base in (a["name"] for a in arms.values() if not a.get("replicate_of")):
        members = group_members(arms, base)
        out[base] = {m: seed_group(members, m) for m in GROUPED if all(m in a["final"] for a in members)}
    return out


def spread(arms: dict[str, dict[str, Any]], main: str) -> dict[str, Any]:
    """Range of each final metric over the main arm and its seed replicates (the report's noise row)."""
    group = group_members(arms, main)
    out: dict[str, Any] = {"arms": [a["name"] for a in group]}
    for metric in METRICS:
        values = [a["final"][metric] for a in group]
        out[metric] = max(values) - min(values)
    return out


def separation(better: list[float], worse: list[float], metric: str) -> int:
    """+1 when interval ``better`` lies wholly on the better side of ``worse``, -1 when wholly on the
    worse side, 0 when they overlap (touching counts as overlap)."""
    lo_b, hi_b = better
    lo_w, hi_w = worse
    if METRICS[metric] > 0:
        return 1 if lo_b > hi_w else -1 if hi_b < lo_w else 0
    return 1 if hi_b < lo_w else -1 if lo_b > hi_w else 0


def decide(sampling: tuple[list[float] | None, list[float] | None], seed: tuple[list[float] | None, ...],
           metric: str) -> tuple[str, str]:
    """(verdict, decided_by) from the (better, worse) sampling intervals and seed intervals."""
    if None in sampling:
        return NOISY, NO_INTERVALS
    if None in seed:
        return NOISY, FEW_SEEDS
    by_sampling, by_seed = separation(*sampling, metric), separation(*seed, metric)
    if by_sampling and by_seed:
        if by_sampling != by_seed:
            return NOISY, OPPOSITE
        return (AGREES if by_sampling > 0 else DISAGREES), SEPARATE
    if not by_sampling and not by_seed:
        return NOISY, BOTH_OVERLAP
    return NOISY, SAMPLING_OVERLAP if not by_sampling else SEED_OVERLAP


def judge_metric(arms: dict[str, dict[str, Any]], seed_groups: dict[str, dict[str, Any]], better: str,
                 worse: str, metric: str) -> dict[str, Any]:
    """One verdict entry: group means, margin (> 0 when ``better`` is better, as the paper says),
    verdict, what decided it, and both arms' intervals."""
    stats = {side: seed_groups[arm][metric] for side, arm in (("better", better), ("worse", worse))}
    intervals = {side: {"sampling": arms[arm]["final"].get(f"{metric}_ci"), "seed": stats[side]["interval"]}
                 for side, arm in (("better", better), ("worse", worse))}
    verdict, decided_by = decide((intervals["better"]["sampling"], intervals["worse"]["sampling"]),
                                 (intervals["better"]["seed"], intervals["worse"]["seed"]), metric)
    margin = METRICS[metric] * (stats["better"]["mean"] - stats["worse"]["mean"])
    return {"better": stats["better"]["mean"], "worse": stats["worse"]["mean"], "margin": margin,
            "verdict": verdict, "decided_by": decided_by, "intervals": intervals}


def verdicts(claims, arms: dict[str, dict[str, Any]], seed_groups: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per claim: its source, an entry per metric, and the row's verdict (FID's: the paper's metric)."""
    rows = []
    for claim in claims:
        row: dict[str, Any] = {"better": claim.better, "worse": claim.worse, "source": claim.source}
        for metric in METRICS:
            row[metric] = judge_metric(arms, seed_groups, claim.better, claim.worse, metric)
        row["verdict"] = row["fid"]["verdict"]
        rows.append(row)
    return rows


def results_record(exp, name: str, results: list[dict[str, Any]], ref, quick: bool, wall_s: float) -> dict[str, Any]:
    """Everything the report shows, as ``results.json`` stores it."""
    arms = {r["name"]: {k: v for k, v in r.items() if k != "status"} for r in results}
    seed_groups = groups(arms)
    floor = {"fid": ref.floor, "fid_ci": list(ref.floor_ci), "n": exp.evaluation.fid_samples,
             "reference_images": exp.evaluation.reference_images}
    return {"experiment": name, "title": exp.title, "question": exp.question, "quick": quick,
            "variable": list(exp.variable), "main": exp.main, "seeds": list(exp.seeds),
            "seed_keys": list(exp.seed_keys), "evaluation": to_dict(exp.evaluation), "floor": floor,
            "judge_real_accuracy": ref.judge_real, "arms": arms, "spread": spread(arms, exp.main),
            "groups": seed_groups, "verdicts": verdicts(exp.claims, arms, seed_groups),
            "status": {r["name"]: r["status"] for r in results}, "total_wall_s": wall_s}
