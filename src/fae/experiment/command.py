"""``fae experiment NAME [--quick] [--out ROOT] [--config FILE] [key=value ...]`` (see ``fae.experiment``)."""
from __future__ import annotations

import argparse
from pathlib import Path

from fae.errors import ConfigError
from fae.experiment import __doc__ as doc
from fae.experiment.config import arm_dict, experiment_path, load_experiment, resolve_arms
from fae.experiment.run import run_experiment


def config_of(args: argparse.Namespace) -> dict:
    """What ``fae experiment`` would run (``--print-config``): the experiment config, the main arm's
    resolved config, and where every other arm differs from it."""
    path = _experiment_file(args)
    exp, arm_overrides = load_experiment(path, args.quick, args.overrides)
    arms, _ = resolve_arms(exp, path, args.quick, arm_overrides)
    main = next(arm for arm in arms if arm.name == exp.main)
    return {"experiment": exp, "main_arm": arm_dict(main.config),
            "arm_differences": {arm.name: arm.diff for arm in arms if arm is not main}}


def _experiment_file(args: argparse.Namespace) -> Path:
    """The experiment's file: ``--config``, else the shipped ``experiments/NAME.yaml``."""
    if not args.name and not args.config:
        raise ConfigError("name an experiment (latent-space, encoder, latent-channels, time-shift, starflow) or pass --config FILE")
    return experiment_path(args.name, args.config)


def run(args: argparse.Namespace) -> int:
    path = _experiment_file(args)
    exp, arm_overrides = load_experiment(path, args.quick, args.overrides)
    arms, base = resolve_arms(exp, path, args.quick, arm_overrides)
    root = args.out or ("runs/experiments-quick" if args.quick else "runs/experiments")
    report = run_experiment(exp, arms, base, path.stem if args.config else args.name, root, quick=args.quick)
    print(f"report: {report}")
    print(f"results: {report.parent / 'results.json'}")
    return 0


def configure(parser: argparse.ArgumentParser) -> None:
    """The options of `fae experiment` (``fae.cli`` made its parser, with the one-line help)."""
    parser.description = doc
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument("name", nargs="?", default=None,
                        help="latent-space | encoder | latent-channels | time-shift | starflow (experiments/NAME.yaml)")
    parser.add_argument("--quick", action="store_true", help="the ~3-minute version (the config's 'quick' "
                        "and 'quick_arms' lists on top of the demo's 'quick' list)")
    parser.add_argument("--out", help="root folder (default runs/experiments, or runs/experiments-quick with --quick); "
                        "the experiment writes ROOT/NAME, stages are shared in ROOT/_stages")
    parser.add_argument("--config", help="an experiment file (a path, or a shipped config's name) "
                        "instead of experiments/NAME.yaml")
    parser.add_argument("overrides", nargs="*", metavar="key=value",
                        help="experiment keys (evaluation.fid_samples=100, seeds=[1,2]) or, for any other "
                             "key, an override of every arm (generator.overrides.train.steps=600)")
    parser.set_defaults(func=run, config_of=config_of)
