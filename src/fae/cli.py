"""``fae <verb>``: the command line. Each verb is a module with ``configure(parser)`` (its options
and ``func``); the table below names them with their one-line help, and only the module of the
verb being run is imported, so ``fae --help`` imports no model code.

This is the entry point, so it owns the process group: under ``torchrun`` every verb runs inside
``fae.distributed.process_group()``; verbs and the library never start or stop it themselves.
"""
from __future__ import annotations

import argparse
import importlib
import sys

from fae import __version__
from fae.errors import FAEError
from fae.training.stages.registry import STAGES

# verb -> (module with configure(parser), one-line help), in the order `fae --help` lists them
VERBS: dict[str, tuple[str, str]] = {
    "demo": ("fae.demo.command", "train and evaluate the whole pipeline on Fashion-MNIST (offline, CPU) "
             "and write an HTML report"),
    "experiment": ("fae.experiment.command", "compare latent spaces / encoders / latent sizes / time shifts "
                   "with equal generators on Fashion-MNIST (HTML report + verdicts)"),
    "train": ("fae.commands.train", "train a stage (" + ", ".join(STAGES) + ")"),
    "plan": ("fae.commands.plan", "what a training stage costs: parameters, FLOPs, memory, time (no weights, "
             "data or GPU)"),
    "cache-latents": ("fae.commands.cache_latents", "encode a dataset with a trained FAE into a latent cache"),
    "sample": ("fae.commands.sample", "sample a trained generator and decode to images (ADM .npz + PNG grid)"),
    # eval_coco adds `coco` to fae.commands.eval's verbs, then configures `fae eval`
    "eval": ("fae.commands.eval_coco", "evaluate: FID/sFID/KID/precision-recall, reference statistics, linear "
             "probe, reconstruction metrics"),
    "viz": ("fae.commands.viz", "figures of an exported FAE (patch-level similarity maps)"),
    "backbones": ("fae.commands.backbones", "list the frozen encoders FAE can adapt"),
}


def _chosen_verb(argv: list[str]) -> str | None:
    """The verb the command line runs (its first word that is not an option), if any."""
    return next((a for a in argv if not a.startswith("-")), None)


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    """The parser, with the full options of the verb in ``argv`` (all verbs when ``argv`` is None)."""
    parser = argparse.ArgumentParser(prog="fae", description="Feature Auto-Encoder: frozen visual "
                                     "encoders as latent spaces for image generation.")
    parser.add_argument("--version", action="version", version=f"fae {__version__}")
    sub = parser.add_subparsers(dest="verb", metavar="VERB")
    chosen = _chosen_verb(argv) if argv is not None else None
    for verb, (module, help_text) in VERBS.items():
        verb_parser = sub.add_parser(verb, help=help_text, description=help_text)
        if argv is None or verb == chosen:
            importlib.import_module(module).configure(verb_parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser(argv)
    args = parser.parse_args(argv)
    if getattr(args, "func", None) is None:
        parser.print_help()
        return 2
    from fae import distributed  # the verb's module has imported torch by now

    try:
        with distributed.process_group():
            result = args.func(args)
    except FAEError as e:
        print(f"fae: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("fae: interrupted", file=sys.stderr)
        return 130
    return int(result or 0)


if __name__ == "__main__":
    raise SystemExit(main())
