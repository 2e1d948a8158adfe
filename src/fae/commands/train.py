"""``fae train <stage> --config FILE [--dry-run] [--resume/--no-resume] [--force] [--restart] key=value...``

Before anything loads, every file the stage reads (data, backbone weights, LPIPS files, FAE
exports, the latent cache) and its run folder are checked; a missing one is an error naming it.
``--dry-run`` is the preflight: it describes the stage (parameters on the meta device, phases,
run folder), prints a checklist (each input OK or MISSING, with the command that fetches or
creates it) and exits 2 when anything is missing, 0 otherwise.

Runs unchanged under ``torchrun --nproc_per_node=N -m fae train ...`` (and multi-node through
torchrun's rendezvous).
"""
from __future__ import annotations

import argparse

from fae import distributed as du
from fae.errors import FAEError
from fae.preflight import require
from fae.training.engine import dry_run, train
from fae.training.preflight import stage_checks
from fae.training.stages.registry import STAGES, load_plan_stage, load_stage, stage_config


def _add_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="YAML config file (default: the schema's defaults)")
    parser.add_argument("--dry-run", action="store_true", help="preflight: validate the config, build the "
                        "models on the meta device, print parameter counts and a checklist of every input "
                        "(OK / MISSING with the command that fetches it); exit 2 when one is missing")
    parser.add_argument("--resume", action=argparse.BooleanOptionalAction, default=True,
                        help="continue from the newest checkpoint in train.run_dir (default: on)")
    parser.add_argument("--force", action="store_true", help="resume a run folder holding a "
                        "different config; with --no-resume, delete its checkpoints first")
    parser.add_argument("--restart", action="store_true", help="when no checkpoint of the run "
                        "folder can be read, move them to checkpoints/unreadable/ and start from step 0")


def config_of(args: argparse.Namespace):
    """The validated config ``fae train STAGE`` runs with (``--print-config``)."""
    return stage_config(args.stage, args.config, args.overrides)


def run(args: argparse.Namespace) -> int:
    if args.dry_run:
        return preflight(args)
    stage = load_stage(args.stage, args.config, args.overrides)
    require(stage_checks(stage))
    result = train(stage, resume=args.resume, force=args.force, restart=args.restart)
    if du.is_main():
        print(f"run folder: {result['run_dir']}")
        print(f"export: {result['export'] or '(this stage exports nothing)'}")
    return 0


def preflight(args: argparse.Namespace) -> int:
    """``--dry-run``: describe the stage and print its checklist; an error naming every missing
    input (exit 2) when one is. Stage II is described before its FAE export exists (the plan's
    stand-in), so the checklist can say the export is missing."""
    described = dry_run(load_plan_stage(args.stage, args.config, args.overrides))
    if described["missing"]:
        raise FAEError(f"preflight: missing or unusable: {', '.join(described['missing'])} (the checklist "
                       f"above says how to fetch or create each)")
    return 0


def configure(parser: argparse.ArgumentParser) -> None:
    """The options of `fae train` (``fae.cli`` made its parser, with the one-line help)."""
    parser.description = __doc__
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument("stage", choices=list(STAGES), help="which stage to train")
    _add_options(parser)
    parser.add_argument("overrides", nargs="*", metavar="key=value",
                        help="config overrides, e.g. train.steps=100 train.optim.lr=3e-4 "
                        "(options may be mixed in)")
    parser.set_defaults(func=run, config_of=config_of)
