"""The shipped experiments (``experiments/*.yaml``): each one, full and ``--quick``, resolves and plans
every arm (all stage configs validated, nothing trained), its arms differ from the main arm only in
the declared variable, every compared arm has seed replicates (3 seeds) that train something of their
own and differ from their arm only in its seed keys, the evaluated checkpoints are the generator's
milestones, and ``--quick`` is a smaller run of the same arms.

Running them is tests/test_experiment.py's job (on a tiny experiment): this file catches a shipped
experiment that a change elsewhere (a renamed key, a new default) broke before a user's 30-minute run.
"""
from __future__ import annotations

from pathlib import Path

import pytest

from fae.config import read_yaml
from fae.experiment.config import (EXPERIMENTS, _declared, config_diff, load_experiment, replicate_name,
                                   replicated_arms, resolve_arms)
from fae.experiment.plan import plan_arm
from fae.experiment.store import resolved_config, stage_key
from fae.experiment.run import check_replicates

SHIPPED = sorted(p for p in EXPERIMENTS.glob("*.yaml") if "arms" in read_yaml(p))


def plans(path: Path, quick: bool, root: Path):
    exp, rest = load_experiment(path, quick)
    arms, base = resolve_arms(exp, path, quick, rest)
    return exp, [plan_arm(arm, base, root / path.stem, root / "_stages", exp.evaluation.steps_of(arm)) for arm in arms]


def test_the_four_experiments_of_the_issue_are_shipped():
    assert {"latent-space", "encoder", "latent-channels", "time-shift"} <= {p.stem for p in SHIPPED}


@pytest.mark.parametrize("quick", [False, True], ids=["full", "quick"])
@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.stem)
def test_a_shipped_experiment_plans_every_arm_within_its_variable(path, quick, tmp_path):
    exp, arm_plans = plans(path, quick, tmp_path)
    assert not any(tmp_path.iterdir())  # planning writes nothing
    names = [p.arm.name for p in arm_plans]
    assert names[:len(exp.arms)] == [a.name for a in exp.arms]
    claimed = {a for c in exp.claims for a in (c.better, c.worse)}
    assert set(replicated_arms(exp)) == claimed | {exp.main}
    assert names[len(exp.arms):] == [replicate_name(a, s) for a in replicated_arms(exp) for s in exp.seeds]
    by_name = {p.arm.name: p for p in arm_plans}
    for plan in arm_plans:
        allowed = exp.variable + (exp.seed_keys if plan.arm.replicate_of else [])
        assert all(_declared(key, allowed) for key in plan.arm.diff), (plan.arm.name, plan.arm.diff)
        if plan.arm.replicate_of:  # the replicate of an arm differs from it only in the seeds
            own = config_diff(by_name[plan.arm.replicate_of].arm.config, plan.arm.config)
            assert own and all(_declared(key, exp.seed_keys) for key in own), (plan.arm.name, own)
        if plan.arm.name != exp.main:
            assert plan.arm.diff, f"arm '{plan.arm.name}' is the main arm again"
        train = resolved_config(plan.generator).train
        assert train.steps == exp.evaluation.steps[-1]
        assert list(train.milestones) == exp.evaluation.steps_of(plan.arm)
    check_replicates(arm_plans)  # raises when a replicate trains what its arm trains
    generators = [stage_key(p.generator) for p in arm_plans]
    assert len(set(generators)) == len(generators)  # every arm trains its own generator


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.stem)
def test_quick_is_a_smaller_run_of_the_same_arms(path, tmp_path):
    full, full_plans = plans(path, False, tmp_path / "full")
    quick, quick_plans = plans(path, True, tmp_path / "quick")
    full_by_name = {p.arm.name: p for p in full_plans}
    names = [p.arm.name for p in quick_plans]
    assert names[:len(full.arms)] == [a.name for a in full.arms]  # every declared arm, in order
    assert set(quick.seeds) <= set(full.seeds) and set(names) <= set(full_by_name)  # at most fewer replicates
    assert [sorted(p.arm.diff) for p in quick_plans] == [sorted(full_by_name[n].arm.diff) for n in names]
    assert quick.evaluation.steps[-1] < full.evaluation.steps[-1]
    assert quick.evaluation.fid_samples < full.evaluation.fid_samples
    for q in quick_plans:  # every stage of every arm trains fewer or as many steps
        f = full_by_name[q.arm.name]
        assert list(q.stages) == list(f.stages)
        for section in f.stages:
            assert resolved_config(q.stages[section]).train.steps <= resolved_config(f.stages[section]).train.steps, \
                (path.stem, q.arm.name, section)


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.stem)
def test_every_compared_arm_has_three_seeds_and_shared_stages_stay_shared(path, tmp_path):
    """Each claimed arm runs 3 times; a replicate retrains every stage its arm trains alone and
    shares with its arm exactly the stages every replicated arm shares (paired), e.g. stage Ib."""
    exp, arm_plans = plans(path, False, tmp_path)
    assert len(exp.seeds) == 2
    by_name = {p.arm.name: p for p in arm_plans}
    compared = [by_name[a] for a in replicated_arms(exp)]
    shared = set.intersection(*({stage_key(s) for s in p.stages.values()} for p in compared))
    for plan in arm_plans:
        if not plan.arm.replicate_of:
            continue
        own = by_name[plan.arm.replicate_of]
        assert stage_key(plan.generator) != stage_key(own.generator)
        for section, spec in plan.stages.items():
            same = stage_key(spec) == stage_key(own.stages[section])
            assert same == (stage_key(own.stages[section]) in shared or section in STAGES_HELD[path.stem]), \
                (plan.arm.name, section)


# stages a replicate keeps although not every compared arm shares them (the YAML comment says why)
STAGES_HELD = {"latent-space": {"pixel_decoder_ib"}, "starflow": {"autoencoder", "pixel_decoder_ib",
                                                                   "pixel_decoder_ii", "pixel_autoencoder"},
               "encoder": set(), "latent-channels": set(), "time-shift": set()}
