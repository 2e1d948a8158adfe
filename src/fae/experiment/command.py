"""``fae experiment NAME [--quick] [--out ROOT] [--config FILE] [key=value ...]`` (see ``fae.experiment``),
and ``fae experiment report [--root ROOT] [--out DIR]``: every experiment's verdicts on one page
(:mod:`fae.experiment.summary`)."""
from __future__ import annotations

import argparse
from pathlib import Path

from fae.errors import ConfigError
from fae.experiment import __doc__ as doc
from fae.experiment.config import arm_dict, experiment_path, load_experiment, resolve_arms
from fae.experiment.run import run_experiment
from fae.experiment.summary import write_summary

REPORT = "report"  # `fae experiment report`: the summary page of every experiment, not an experiment


def default_root(quick: bool) -> str:
    """Where experiments run (and the summary reads) unless told: the quick runs have their own root."""
    return "runs/experiments-quick" if quick else "runs/experiments"


def config_of(args: argparse.Namespace) -> dict:
    """What ``fae experiment`` would run (``--print-config``): the experiment config, the main arm's
    resolved config, and where every other arm differs from it."""
    if args.name == REPORT:
        raise ConfigError("`fae experiment report` has no config to print; it reads ROOT/NAME/results.json (--root)")
    path = _experiment_file(args)
    exp, arm_overrides = load_experiment(path, args.quick, args.overrides)
    arms, _ = resolve_arms(exp, path, args.quick, arm_overrides)
    main = next(arm for arm in arms if arm.name == exp.main)
    return {"experiment": exp, "main_arm": arm_dict(main.config),
            "arm_differences": {arm.name: arm.diff for arm in arms if arm is not main}}


def _experiment_file(args: argparse.Namespace) -> Path:
    """The experiment's file: ``--config``, else the shipped ``experiments/NAME.yaml``."""
    if not args.name and not args.config:
        raise ConfigError("name an experiment (latent-space, encoder, latent-channels, time-shift, starflow) "
                          "or pass --config FILE; `fae experiment report` writes the summary page")
    if args.root:
        raise ConfigError(f"--root is an option of `fae experiment report`, not of an experiment run; "
                          f"an experiment writes under --out (default {default_root(args.quick)})")
    return experiment_path(args.name, args.config)


def summary(args: argparse.Namespace) -> int:
    """``fae experiment report``: summary.html + summary.md of every experiment under --root (in --out,
    default the root itself)."""
    if args.config or args.overrides:
        raise ConfigError("`fae experiment report` takes --root ROOT and --out DIR only (got "
                          f"{'--config' if args.config else ' '.join(args.overrides)}); it reads ROOT/NAME/results.json")
    root = args.root or default_root(args.quick)
    html, md = write_summary(root, args.out or root)
    print(f"summary: {html}")
    print(f"markdown table: {md}")
    return 0


def run(args: argparse.Namespace) -> int:
    if args.name == REPORT:
        return summary(args)
    path = _experiment_file(args)
    exp, arm_overrides = load_experiment(path, args.quick, args.overrides)
    arms, base = resolve_arms(exp, path, args.quick, arm_overrides)
    root = args.out or default_root(args.quick)
    report = run_experiment(exp, arms, base, path.stem if args.config else args.name, root, quick=args.quick)
    print(f"report: {report}")
    print(f"results: {report.parent / 'results.json'}")
    return 0


def configure(parser: argparse.ArgumentParser) -> None:
    """The options of `fae experiment` (``fae.cli`` made its parser, with the one-line help)."""
    parser.description = doc
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument("name", nargs="?", default=None,
                        help="latent-space | encoder | latent-channels | time-shift | starflow (experiments/NAME.yaml); "
                             "'report': the summary page (summary.html + summary.md) of every experiment under --root")
    parser.add_argument("--quick", action="store_true", help="the version within 5 minutes (the config's 'quick' "
                        "and 'quick_arms' lists on top of the demo's 'quick' list)")
    parser.add_argument("--out", help="root folder (default runs/experiments, or runs/experiments-quick with --quick); "
                        "the experiment writes ROOT/NAME, stages are shared in ROOT/_stages. With 'report': "
                        "the folder for summary.html and summary.md (default the --root)")
    parser.add_argument("--root", help="with 'report': the folder whose NAME/results.json files it gathers "
                        "(default runs/experiments, or runs/experiments-quick with --quick; docs/experiments "
                        "for the kept runs)")
    parser.add_argument("--config", help="an experiment file (a path, or a shipped config's name) "
                        "instead of experiments/NAME.yaml")
    parser.add_argument("overrides", nargs="*", metavar="key=value",
                        help="experiment keys (evaluation.fid_samples=100, seeds=[1,2]) or, for any other "
                             "key, an override of every arm (generator.overrides.train.steps=600)")
    parser.set_defaults(func=run, config_of=config_of)
