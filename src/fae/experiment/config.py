"""An experiment's configuration (the shipped ``experiments/NAME.yaml``) and its arms.

An experiment is a *base* (the demo config, ``demo/demo.yaml``, read at run time, so its
shapes and budgets are whatever the demo says today) plus *arms*. Each arm is a list of
``key=value`` overrides of an :class:`ArmConfig`: the demo's keys (``generator.overrides.
transport.shift=1.0``) plus the experiment's own (``space=tokens``, ``pixel_autoencoder...``).
Arm i is resolved as: base file -> the experiment's ``overrides`` (its full-run budget) ->
(``--quick``: the demo's ``quick`` list, then the experiment's ``quick_arms``, so a shortened
stage gets the demo's quick length again without restating it) -> the arm's ``set`` ->
command-line arm overrides. ``variable`` declares the
keys the arms may differ in; :func:`resolve_arms` refuses an arm whose resolved config differs
from the main arm's anywhere else, and each arm's diff is stored with its results.

Seed replicates: the main arm and every arm a claim names are run again once per seed in ``seeds``
(``ARM-sSEED``, every key of ``seed_keys`` set to that seed), so each compared arm has a seed group
(its own run + its replicates) whose spread a verdict is read against. ``seed_keys`` should name the
seed of every stage the compared arms train on their own; a stage that every compared arm shares
(the same stage key, e.g. the stage-Ib decoder of latent-channels) stays out of ``seed_keys``, so the
replicates of a seed share it again (a paired comparison: its noise is common to both arms).
"""
from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from fae.config import (OMIT_IF_DEFAULT, SHIPPED_CONFIGS, apply_overrides, check_choices, config_file, flatten,
                        from_dict, read_yaml, to_dict)
from fae.demo.config import DemoConfig, StageRun
from fae.errors import ConfigError
from fae.generation.decode import check_sampler_overrides

SPACES = ("fae", "tokens", "pixels", "pixel-ae")


@dataclass
class ArmConfig(DemoConfig):
    """One arm: the demo's config plus what the experiments vary beyond it.

    Args:
        space: what the generator learns: ``fae`` (FAE latents), ``tokens`` (raw backbone tokens,
            decoded by the stage-Ib pixel decoder), ``pixels`` (images patchified to the FAE's
            token grid), ``pixel-ae`` (latents of a pixel VAE of the FAE's latent shape).
        pixel_autoencoder: the pixel VAE's stage (``fae train pixel-autoencoder``; its latent
            shape is set to the FAE's by the experiment).
    """

    space: Literal["fae", "tokens", "pixels", "pixel-ae"] = "fae"
    pixel_autoencoder: StageRun = field(default_factory=lambda: StageRun(None))


@dataclass
class Arm:
    """Args: name: the arm's folder and legend name; set: its ``key=value`` overrides."""

    name: str
    set: list[str] = field(default_factory=list)


@dataclass
class Claim:
    """One ordering the paper reports: arm ``better`` beats arm ``worse``.

    Args:
        better, worse: arm names.
        source: where the paper says it (table, numbers).
    """

    better: str
    worse: str
    source: str = ""


@dataclass
class Evaluation:
    """How each arm's generator is scored.

    Args:
        steps: generator steps whose checkpoints are evaluated (the last is the training budget).
        fid_samples: class-balanced samples per checkpoint for FID and class accuracy; the
            real-vs-real floor is measured at the same N.
        reference_images: first test images whose Inception statistics are the FID reference
            (the floor's N real images are the ones after them).
        sampling: sampler overrides (keys of ``SamplerConfig``), the same for every arm.
        batch_size: samples per generator / decoder pass.
        seed: seed of the samples (the same noise for every arm and checkpoint).
        grid_per_class: samples per class shown in the report's grids.
        likelihood_images: first test images whose latents (in each arm's own space) a flow
            generator's checkpoints are scored on in bits per dimension (``fae.experiment.likelihood``);
            diffusion arms ignore it.
        replicate_steps: which of ``steps`` a seed replicate is scored at: ``all``, or ``final``
            (only the last: the one its seed group and every verdict read; the replicate keeps no
            earlier checkpoint and its curve is one point). Arms that are not replicates are scored
            at every step either way.
    """

    steps: list[int] = field(default_factory=lambda: [300, 600, 1200])
    fid_samples: int = 300
    reference_images: int = 1000
    sampling: dict[str, Any] = field(default_factory=dict)
    batch_size: int = 100
    seed: int = 0
    grid_per_class: int = 2
    likelihood_images: int = 500
    replicate_steps: Literal["all", "final"] = field(default="all", metadata=OMIT_IF_DEFAULT)

    def steps_of(self, arm: "ResolvedArm") -> list[int]:
        """The steps arm ``arm`` is trained to and scored at (see ``replicate_steps``)."""
        return self.steps[-1:] if arm.replicate_of and self.replicate_steps == "final" else list(self.steps)

    def validate(self) -> None:
        if not self.steps or any(s < 1 for s in self.steps) or sorted(set(self.steps)) != list(self.steps):
            raise ConfigError(f"config key 'evaluation.steps' must be increasing positive steps, got {self.steps}")
        for key in ("fid_samples", "reference_images", "batch_size", "likelihood_images"):
            if getattr(self, key) < 2:
                raise ConfigError(f"config key 'evaluation.{key}' must be >= 2, got {getattr(self, key)}")
        if self.reference_images + self.fid_samples > 10000:
            raise ConfigError("evaluation.reference_images + evaluation.fid_samples must be <= 10000 "
                              "(the Fashion-MNIST test split; the floor needs disjoint real images)")
        check_sampler_overrides(self.sampling, "evaluation.sampling")
        check_choices(self, "evaluation")


@dataclass
class ExperimentConfig:
    """``experiments/NAME.yaml``.

    Args:
        title: the report's heading.
        question: what the experiment asks (the report's first paragraph).
        demo: the base demo config (relative to this file).
        variable: dotted ArmConfig keys (or key prefixes) the arms may differ in.
        overrides: ArmConfig overrides of every arm (the experiment's budget).
        arms: the arms.
        main: the reference arm (every other arm's diff is taken against it); replicated over ``seeds``.
        seeds: the replicates' seeds (each replicated arm runs once more per seed; its own run makes
            ``len(seeds) + 1`` values for the seed interval). Replicated: the main arm and every arm
            a claim names.
        seed_keys: ArmConfig keys a replicate sets to its seed: the seeds of everything the
            replicated arms train on their own (generator, FAE, pixel decoders, pixel VAE).
        evaluation: how checkpoints are scored.
        claims: the paper's orderings, checked in the verdict table.
        quick: experiment keys ``--quick`` sets (e.g. ``evaluation.steps=[20, 40]``).
        quick_arms: ArmConfig overrides ``--quick`` adds to every arm (after the experiment's
            ``overrides`` and the demo's ``quick``, which set what both name).
    """

    title: str
    arms: list[Arm]
    main: str
    question: str = ""
    demo: str = "../demo/demo.yaml"
    variable: list[str] = field(default_factory=list)
    overrides: list[str] = field(default_factory=list)
    seeds: list[int] = field(default_factory=lambda: [1])
    seed_keys: list[str] = field(default_factory=lambda: ["generator.overrides.train.seed"])
    evaluation: Evaluation = field(default_factory=Evaluation)
    claims: list[Claim] = field(default_factory=list)
    quick: list[str] = field(default_factory=list)
    quick_arms: list[str] = field(default_factory=list)

    def validate(self) -> None:
        names = [a.name for a in self.arms]
        if len(set(names)) != len(names) or not names:
            raise ConfigError(f"config key 'arms' needs distinct arm names, got {names}")
        bad = [n for n in names if not n or "/" in n or n.startswith((".", "_"))]
        if bad:
            raise ConfigError(f"config key 'arms': names {bad} cannot be folder names")
        if self.main not in names:
            raise ConfigError(f"config key 'main' is '{self.main}', not one of the arms {names}")
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            raise ConfigError(f"config key 'seeds' needs at least one seed, all distinct (the seed-to-seed "
                              f"spread), got {self.seeds}")
        if not self.seed_keys:
            raise ConfigError("config key 'seed_keys' must name the seeds a replicate changes "
                              "(e.g. generator.overrides.train.seed)")
        if not self.variable:
            raise ConfigError("config key 'variable' must name the keys the arms differ in")
        for claim in self.claims:
            for arm in (claim.better, claim.worse):
                if arm not in names:
                    raise ConfigError(f"config key 'claims': arm '{arm}' is not one of {names}")
        self.evaluation.validate()


@dataclass
class ResolvedArm:
    """An arm ready to run.

    Attributes:
        name: folder name (replicates: ``ARM-sSEED``).
        config: the resolved :class:`ArmConfig`.
        overrides: every override applied to the base file, in order.
        diff: ``{key: [main arm's value, this arm's value]}`` over the flattened configs.
        replicate_of: for a seed replicate, the name of the arm it replicates (its seed group), else None.
    """

    name: str
    config: ArmConfig
    overrides: list[str]
    diff: dict[str, list[Any]]
    replicate_of: str | None = None

    def key(self) -> str:
        """sha256 of the resolved config (what the arm's cached results are keyed on)."""
        return hashlib.sha256(json.dumps(arm_dict(self.config), sort_keys=True, default=str).encode()).hexdigest()


def arm_dict(cfg: ArmConfig) -> dict[str, Any]:
    """The arm's config as plain data, without the demo's ``quick`` list (already applied)."""
    data = to_dict(cfg)
    data.pop("quick", None)
    return data


def config_diff(a: ArmConfig, b: ArmConfig) -> dict[str, list[Any]]:
    """``{dotted key: [a's value, b's value]}`` where the two resolved configs differ."""
    fa, fb = flatten(arm_dict(a)), flatten(arm_dict(b))
    return {k: [fa.get(k), fb.get(k)] for k in sorted(set(fa) | set(fb)) if fa.get(k) != fb.get(k)}


def _declared(key: str, variable: list[str]) -> bool:
    return any(key == v or key.startswith(v + ".") for v in variable)


# The shipped experiments (package data): ``experiments/NAME.yaml``.
EXPERIMENTS = SHIPPED_CONFIGS / "experiments"


def experiment_path(name: str | None, path: str | None) -> Path:
    """The config file: ``path`` when given (a file or a shipped config's name), else the shipped
    ``experiments/NAME.yaml``."""
    if path:
        return config_file(path)
    file = EXPERIMENTS / f"{name}.yaml"
    if not file.is_file():
        known = sorted(p.stem for p in EXPERIMENTS.glob("*.yaml") if "arms:" in p.read_text())
        raise ConfigError(f"no experiment '{name}' (experiments/{name}.yaml); known: {', '.join(known)}")
    return file


def split_overrides(overrides: list[str]) -> tuple[list[str], list[str]]:
    """Command-line overrides -> (experiment keys, ArmConfig keys of every arm): a key whose first
    part is a field of :class:`ExperimentConfig` is the experiment's."""
    own = {f.name for f in dataclasses.fields(ExperimentConfig)}
    experiment = [o for o in overrides if o.split("=", 1)[0].split(".")[0] in own]
    return experiment, [o for o in overrides if o not in experiment]


def load_experiment(path: Path, quick: bool, overrides: list[str] = ()) -> tuple[ExperimentConfig, list[str]]:
    """The experiment config (file, ``--quick``'s ``quick`` list, then command-line experiment
    keys) and the command-line overrides left for every arm."""
    experiment_keys, arm_keys = split_overrides(list(overrides))
    data = read_yaml(path)
    extra = list(data.get("quick", [])) if quick else []
    cfg = from_dict(ExperimentConfig, apply_overrides(data, extra + experiment_keys))
    cfg.validate()
    return cfg, arm_keys


def replicated_arms(exp: ExperimentConfig) -> list[str]:
    """The arms that get seed replicates: the main arm, then every arm a claim names (arm order)."""
    claimed = {name for claim in exp.claims for name in (claim.better, claim.worse)}
    return [exp.main] + [a.name for a in exp.arms if a.name in claimed and a.name != exp.main]


def replicate_name(arm: str, seed: int) -> str:
    """A seed replicate's name (and folder): ``c64-s2``."""
    return f"{arm}-s{seed}"


def _arm_plan(exp: ExperimentConfig) -> list[tuple[str, list[str], str | None]]:
    """(name, the arm's own overrides, the arm it replicates or None) of every arm to run: the
    declared arms, then each replicated arm's seed replicates."""
    sets = {a.name: list(a.set) for a in exp.arms}
    replicates = [(replicate_name(arm, seed), sets[arm] + [f"{k}={seed}" for k in exp.seed_keys], arm)
                  for arm in replicated_arms(exp) for seed in exp.seeds]
    clash = sorted({name for name, _, _ in replicates} & set(sets))
    if clash:
        raise ConfigError(f"config key 'arms': {clash} are also seed replicate names; rename those arms")
    return [(a.name, sets[a.name], None) for a in exp.arms] + replicates


def _check_arm(exp: ExperimentConfig, name: str, diff: dict[str, list[Any]], replicate_of: str | None) -> None:
    """An arm may differ from the main arm only in ``variable``; a replicate from its own arm only
    in ``seed_keys``, and in at least one of them."""
    allowed = exp.seed_keys if replicate_of else exp.variable
    reference = replicate_of or exp.main
    if replicate_of and not diff:
        raise ConfigError(f"experiment arm '{name}' is the arm '{replicate_of}' again: its seed is already "
                          f"that arm's value of {exp.seed_keys}; choose other 'seeds'")
    stray = [k for k in diff if not _declared(k, allowed)]
    if stray:
        kind = "the arm" if replicate_of else "the main arm"
        raise ConfigError(f"experiment arm '{name}' differs from {kind} '{reference}' in {stray}, outside "
                          f"the declared {'seed_keys' if replicate_of else 'variable'} {allowed}")


def resolve_arms(exp: ExperimentConfig, path: Path, quick: bool, arm_overrides: list[str] = ()
                 ) -> tuple[list[ResolvedArm], Path]:
    """Every arm (the seed replicates after the declared ones) with its resolved config and diff
    against the main arm; and the demo config's folder (its stage files' base).

    Raises ConfigError when an arm differs from the main arm outside ``variable``, a replicate from
    its arm outside ``seed_keys``, or when an override names an unknown key (the error names it and
    the arm).
    """
    demo_path = (path.parent / exp.demo).resolve()
    base = read_yaml(demo_path)
    # the experiment's budget first: --quick then shrinks it as it shrinks the demo
    common = list(exp.overrides) + (list(base.get("quick", [])) + list(exp.quick_arms) if quick else [])
    plan = _arm_plan(exp)
    configs = {}
    for name, arm_set, _ in plan:
        overrides = common + list(arm_set) + list(arm_overrides)
        try:
            configs[name] = (from_dict(ArmConfig, apply_overrides(copy.deepcopy(base), overrides)), overrides)
        except ConfigError as e:
            raise ConfigError(f"experiment arm '{name}': {e}") from None
    reference = configs[exp.main][0]
    arms = []
    for name, _, replicate_of in plan:
        cfg, overrides = configs[name]
        diff = config_diff(reference, cfg)
        own = config_diff(configs[replicate_of][0], cfg) if replicate_of else diff
        _check_arm(exp, name, own, replicate_of)
        arms.append(ResolvedArm(name, cfg, overrides, diff, replicate_of))
    return arms, demo_path.parent
