"""``fae train <stage> --config FILE [--dry-run] [--resume/--no-resume] [--force] [--restart] key=value...``

Runs unchanged under ``torchrun --nproc_per_node=N -m fae train ...`` (and multi-node through
torchrun's rendezvous).
"""
from __future__ import annotations

import argparse

from fae import distributed as du
from fae.training.engine import dry_run, train
from fae.training.stages.registry import STAGES, load_stage, stage_module


def _add_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="YAML config file (default: the schema's defaults)")
    parser.add_argument("--dry-run", action="store_true", help="validate the config, build the "
                        "models on the meta device, print parameter counts and the run folder, exit")
    parser.add_argument("--resume", action=argparse.BooleanOptionalAction, default=True,
                        help="continue from the newest checkpoint in train.run_dir (default: on)")
    parser.add_argument("--force", action="store_true", help="resume a run folder holding a "
                        "different config; with --no-resume, delete its checkpoints first")
    parser.add_argument("--restart", action="store_true", help="when no checkpoint of the run "
                        "folder can be read, move them to checkpoints/unreadable/ and start from step 0")


def _split_options(args: argparse.Namespace) -> argparse.Namespace:
    """Options may follow the stage name, mixed with the overrides (argparse cannot parse that
    with sub-commands, so the tail is parsed again here)."""
    module = stage_module(args.stage)
    tail = argparse.ArgumentParser(prog=f"fae train {args.stage}", description=module.__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
    _add_options(tail)
    tail.add_argument("overrides", nargs="*", metavar="key=value",
                      help=f"overrides of {module.CONFIG_CLASS.__name__} keys, e.g. train.steps=100")
    extra = tail.parse_intermixed_args(args.overrides)
    args.config = extra.config or args.config
    args.dry_run = args.dry_run or extra.dry_run
    args.resume = args.resume and extra.resume
    args.force = args.force or extra.force
    args.restart = args.restart or extra.restart
    args.overrides = extra.overrides
    return args


def run(args: argparse.Namespace) -> int:
    args = _split_options(args)
    stage = load_stage(args.stage, args.config, args.overrides)
    if args.dry_run:
        dry_run(stage)
        return 0
    result = train(stage, resume=args.resume, force=args.force, restart=args.restart)
    if du.is_main():
        print(f"run folder: {result['run_dir']}")
        print(f"export: {result['export'] or '(this stage exports nothing)'}")
    return 0


def configure(parser: argparse.ArgumentParser) -> None:
    """The options of `fae train` (``fae.cli`` made its parser, with the one-line help)."""
    parser.description = __doc__
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument("stage", choices=list(STAGES), help="which stage to train")
    _add_options(parser)
    parser.add_argument("overrides", nargs=argparse.REMAINDER, metavar="key=value",
                        help="config overrides, e.g. train.steps=100 train.optim.lr=3e-4 "
                        "(options may be mixed in)")
    parser.set_defaults(func=run)
