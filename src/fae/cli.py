"""``fae <verb>``: the command line. Each verb is a module of ``fae.commands`` (and the demo), listed
here explicitly; each module's ``register(subparsers)`` adds its parser and sets ``func``.

This is the entry point, so it owns the process group: under ``torchrun`` every verb runs inside
``fae.distributed.process_group()``; verbs and the library never start or stop it themselves.
"""
from __future__ import annotations

import argparse
import sys

from fae.errors import FAEError


def _verb_modules() -> list:
    """The verb modules, in the order ``fae --help`` lists them."""
    from fae.commands import backbones, cache_latents, eval, eval_coco, plan, sample, train, viz
    from fae.demo import command as demo
    from fae.experiment import command as experiment

    eval_coco.add_verb(eval._VERBS)  # `fae eval coco`

    return [demo, experiment, train, plan, cache_latents, sample, eval, viz, backbones]


def build_parser() -> argparse.ArgumentParser:
    from fae import __version__

    parser = argparse.ArgumentParser(prog="fae", description="Feature Auto-Encoder: frozen visual "
                                     "encoders as latent spaces for image generation.")
    parser.add_argument("--version", action="version", version=f"fae {__version__}")
    sub = parser.add_subparsers(dest="verb", metavar="VERB")
    for module in _verb_modules():
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "func", None) is None:
        parser.print_help()
        return 2
    from fae import distributed

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
