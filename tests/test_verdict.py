"""fae.experiment.verdict: seed groups, the two-interval rule and what decided it, results written
before intervals, and by simulation: equal arms stay inside the noise, well separated arms agree."""
from __future__ import annotations

import json

import numpy as np
import pytest

from fae.evaluation.intervals import bootstrap_fid, seed_interval, wilson
from fae.experiment.config import Claim
from fae.experiment.report import has_intervals
from fae.experiment.verdict import (AGREES, BOTH_OVERLAP, DISAGREES, FEW_SEEDS, NO_INTERVALS, NOISY, OPPOSITE,
                                    SAMPLING_OVERLAP, SEED_OVERLAP, SEPARATE, decide, groups, verdicts)
from kept_experiments import KEPT, OLD_RULE_RUN, read

OLD_RULE = [OLD_RULE_RUN, *(p for p in KEPT if not has_intervals(read(p)))]
NEW_RULE = [p for p in KEPT if has_intervals(read(p))]


def arm(name: str, fid: float, accuracy: float, replicate_of: str | None = None, *, fid_ci=None,
        accuracy_ci=None) -> dict:
    final = {"step": 100, "fid": fid, "class_accuracy": accuracy}
    if fid_ci is not None:
        final.update(fid_ci=list(fid_ci), class_accuracy_ci=list(accuracy_ci))
    return {"name": name, "replicate_of": replicate_of, "final": final}


def record_arms(*arms: dict) -> dict[str, dict]:
    return {a["name"]: a for a in arms}


@pytest.mark.parametrize("sampling, seed, metric, expected", [
    (([1, 2], [3, 4]), ([1, 2], [3, 4]), "fid", (AGREES, SEPARATE)),  # lower FID is better
    (([3, 4], [1, 2]), ([3, 4], [1, 2]), "fid", (DISAGREES, SEPARATE)),
    (([0.7, 0.8], [0.5, 0.6]), ([0.7, 0.8], [0.5, 0.6]), "class_accuracy", (AGREES, SEPARATE)),
    (([1, 3], [2, 4]), ([1, 2], [3, 4]), "fid", (NOISY, SAMPLING_OVERLAP)),
    (([1, 2], [3, 4]), ([1, 3.5], [3, 4]), "fid", (NOISY, SEED_OVERLAP)),
    (([1, 3], [2, 4]), ([1, 3.5], [3, 4]), "fid", (NOISY, BOTH_OVERLAP)),
    (([1, 2], [2, 4]), ([1, 2], [3, 4]), "fid", (NOISY, SAMPLING_OVERLAP)),  # touching is overlapping
    (([1, 2], [3, 4]), ([3, 4], [1, 2]), "fid", (NOISY, OPPOSITE)),
    (([1, 2], None), ([1, 2], [3, 4]), "fid", (NOISY, NO_INTERVALS)),
    (([1, 2], [3, 4]), ([1, 2], None), "fid", (NOISY, FEW_SEEDS)),
])
def test_decide_needs_both_intervals_to_separate(sampling, seed, metric, expected):
    assert decide(sampling, seed, metric) == expected


def test_groups_and_verdict_entry_values():
    arms = record_arms(arm("a", 80.0, 0.70, fid_ci=(75, 85), accuracy_ci=(0.60, 0.78)),
                       arm("b", 110.0, 0.66, fid_ci=(104, 117), accuracy_ci=(0.56, 0.75)),
                       arm("a-s1", 82.0, 0.72, "a", fid_ci=(76, 88), accuracy_ci=(0.62, 0.80)),
                       arm("a-s2", 81.0, 0.68, "a", fid_ci=(76, 88), accuracy_ci=(0.58, 0.77)),
                       arm("b-s1", 112.0, 0.64, "b", fid_ci=(105, 118), accuracy_ci=(0.54, 0.73)),
                       arm("b-s2", 111.0, 0.65, "b", fid_ci=(105, 118), accuracy_ci=(0.55, 0.74)))
    seed_groups = groups(arms)
    assert set(seed_groups) == {"a", "b"}
    a_fid = seed_groups["a"]["fid"]
    assert a_fid["values"] == [80.0, 82.0, 81.0] and a_fid["mean"] == pytest.approx(81.0)
    assert a_fid["sd"] == pytest.approx(1.0) and a_fid["interval"] == pytest.approx(list(seed_interval([80, 82, 81])))
    row, = verdicts([Claim("a", "b", "T1")], arms, seed_groups)
    fid = row["fid"]
    assert (fid["better"], fid["worse"], fid["margin"]) == pytest.approx((81.0, 111.0, 30.0))
    assert (fid["verdict"], fid["decided_by"]) == (AGREES, SEPARATE) and row["verdict"] == AGREES
    assert fid["intervals"]["better"] == {"sampling": [75, 85], "seed": pytest.approx(a_fid["interval"])}
    accuracy = row["class_accuracy"]
    assert accuracy["margin"] == pytest.approx(0.70 - 0.65)
    assert (accuracy["verdict"], accuracy["decided_by"]) == (NOISY, BOTH_OVERLAP)
    json.dumps(row)  # results.json stores it as is


def test_a_single_seed_is_inside_the_noise():
    arms = record_arms(arm("a", 10.0, 0.9, fid_ci=(9, 11), accuracy_ci=(0.85, 0.93)),
                       arm("b", 90.0, 0.2, fid_ci=(85, 95), accuracy_ci=(0.15, 0.26)))
    seed_groups = groups(arms)
    assert seed_groups["a"]["fid"] == {"mean": 10.0, "sd": None, "values": [10.0], "interval": None}
    row, = verdicts([Claim("a", "b")], arms, seed_groups)
    for metric in ("fid", "class_accuracy"):
        assert (row[metric]["verdict"], row[metric]["decided_by"]) == (NOISY, FEW_SEEDS)


@pytest.mark.parametrize("path", OLD_RULE, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_results_written_before_intervals_still_judge(path):
    """A results.json written before intervals (no *_ci, one replicate of the main arm only) goes
    through the new rule without a crash: every verdict inside the noise, decided by the missing
    intervals."""
    old = read(path)
    seed_groups = groups(old["arms"])
    assert set(seed_groups) == {a["name"] for a in old["arms"].values() if not a.get("replicate_of")}
    claims = [Claim(r["better"], r["worse"], r["source"]) for r in old["verdicts"]]
    for row in verdicts(claims, old["arms"], seed_groups):
        for metric in ("fid", "class_accuracy"):
            assert (row[metric]["verdict"], row[metric]["decided_by"]) == (NOISY, NO_INTERVALS)
            assert row[metric]["better"] == pytest.approx(seed_groups[row["better"]][metric]["mean"])


@pytest.mark.parametrize("path", NEW_RULE, ids=lambda p: p.parent.name)
def test_kept_runs_judged_again_give_their_recorded_verdicts(path):
    """A kept run recorded under the interval rule: its arms, judged again, give the recorded seed
    groups and, claim by claim, the same values, intervals, verdicts and deciding interval."""
    record = read(path)
    seed_groups = groups(record["arms"])
    for name, group in record["groups"].items():
        for metric, recorded in group.items():
            assert seed_groups[name][metric]["values"] == pytest.approx(recorded["values"], rel=1e-12)
            assert seed_groups[name][metric]["mean"] == pytest.approx(recorded["mean"], rel=1e-12)
    claims = [Claim(r["better"], r["worse"], r["source"]) for r in record["verdicts"]]
    for row, recorded in zip(verdicts(claims, record["arms"], seed_groups), record["verdicts"], strict=True):
        for metric in ("fid", "class_accuracy"):
            got, want = row[metric], recorded[metric]
            assert (got["verdict"], got["decided_by"]) == (want["verdict"], want["decided_by"])
            assert (got["better"], got["worse"]) == pytest.approx((want["better"], want["worse"]), rel=1e-12)
            for side in ("better", "worse"):
                for kind in ("sampling", "seed"):
                    assert got["intervals"][side][kind] == pytest.approx(want["intervals"][side][kind], rel=1e-9)


def simulated_arms(rng: np.random.Generator, accuracy: dict[str, float], shift: dict[str, float], *,
                   seeds: int = 3, n: int = 200, d: int = 8, seed_sd: float = 0.02) -> dict[str, dict]:
    """Each arm's seeds: a true class accuracy jittered per seed, judged on n samples (Wilson), and
    n Gaussian features of mean ``shift`` + per-seed jitter against a N(0, I) reference (bootstrap)."""
    arms = {}
    for base in accuracy:
        for s in range(seeds):
            name = base if s == 0 else f"{base}-s{s}"
            hits = int(rng.binomial(n, np.clip(accuracy[base] + seed_sd * rng.normal(), 0, 1)))
            features = rng.normal(size=(n, d)) + shift[base] + seed_sd * rng.normal(size=d)
            diff = features.mean(0)
            fid = float(diff @ diff + np.trace(np.cov(features, rowvar=False)) + d
                        - 2 * np.sqrt(np.clip(np.linalg.eigvalsh(np.cov(features, rowvar=False)), 0, None)).sum())
            arms[name] = arm(name, fid, hits / n, None if s == 0 else base,
                             fid_ci=bootstrap_fid(features, np.zeros(d), np.eye(d), resamples=100, seed=s),
                             accuracy_ci=wilson(hits, n))
    return arms


def verdict_counts(rng, accuracy, shift, trials: int) -> dict[str, dict[str, int]]:
    counts = {"fid": {}, "class_accuracy": {}}
    for _ in range(trials):
        arms = simulated_arms(rng, accuracy, shift)
        row, = verdicts([Claim("a", "b")], arms, groups(arms))
        for metric, tally in counts.items():
            tally[row[metric]["verdict"]] = tally.get(row[metric]["verdict"], 0) + 1
    return counts


def test_simulation_equal_arms_stay_inside_the_noise():
    counts = verdict_counts(np.random.default_rng(0), {"a": 0.7, "b": 0.7}, {"a": 0.5, "b": 0.5}, trials=40)
    for metric, tally in counts.items():
        assert tally.get(NOISY, 0) >= 38, (metric, tally)  # >= 95%: a false verdict needs both intervals


def test_simulation_separated_arms_agree():
    counts = verdict_counts(np.random.default_rng(1), {"a": 0.85, "b": 0.5}, {"a": 0.2, "b": 1.5}, trials=40)
    for metric, tally in counts.items():
        assert tally.get(AGREES, 0) >= 38, (metric, tally)
        assert DISAGREES not in tally
