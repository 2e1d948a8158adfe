"""``fae <verb>``: a thin command line over library calls.

Each verb lives in the module that owns it; that module exposes ``register(subparsers)`` which
adds its parser(s) and sets ``func`` (a callable taking the parsed ``argparse.Namespace``).
Modules keep heavy imports inside their functions so ``fae --help`` stays fast.
"""
from __future__ import annotations

import argparse
import importlib
import sys

from fae.errors import FAEError

# (module, verbs it registers) in the order they appear in --help.
COMMAND_MODULES = (
    "fae.demo",                # demo
    "fae.training.cli",        # train {autoencoder, pixel-decoder, generator}
    "fae.data.cli",            # cache-latents
    "fae.pipeline",            # sample
    "fae.evaluation.cli",      # eval {fid, ref-stats, probe, recon}
    "fae.backbones.cli",       # backbones
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fae", description="Feature Auto-Encoder: frozen visual "
                                     "encoders as latent spaces for image generation.")
    from fae import __version__
    parser.add_argument("--version", action="version", version=f"fae {__version__}")
    sub = parser.add_subparsers(dest="verb", metavar="VERB")
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as e:
            if e.name == name:  # that verb is not built yet
                continue
            raise
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "func", None) is None:
        parser.print_help()
        return 2
    try:
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
