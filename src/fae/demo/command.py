"""``fae demo [--quick] [--out runs/demo]``: the whole FAE pipeline, offline, on Fashion-MNIST
(see ``fae.demo`` for what it runs)."""
from __future__ import annotations

import argparse

from fae.demo import __doc__ as doc
from fae.demo.config import load_demo_config
from fae.demo.pipeline import run_demo


def config_of(args: argparse.Namespace):
    """The demo config the run would use (``--print-config``): file, ``--quick``, ``--t2i``, overrides."""
    return load_demo_config(args.config, args.quick, args.overrides, t2i=args.t2i)[0]


def run(args: argparse.Namespace) -> int:
    cfg, base = load_demo_config(args.config, args.quick, args.overrides, t2i=args.t2i)
    out = args.out or ("runs/demo-quick" if args.quick else "runs/demo")
    report = run_demo(cfg, base, out, quick=args.quick)
    print(f"report: {report}")
    print(f"figures: {report.parent / 'figures'}")
    return 0


def configure(parser: argparse.ArgumentParser) -> None:
    """The options of `fae demo` (``fae.cli`` made its parser, with the one-line help)."""
    parser.description = doc
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument("--quick", action="store_true", help="the ~1.5-minute version (smaller subsets "
                        "and budgets: the config's 'quick' overrides)")
    parser.add_argument("--t2i", action="store_true", help="also train and evaluate a small text-to-image "
                        "MMDiT on generated captions (a report section; the config's t2i.*)")
    parser.add_argument("--out", help="output folder (default runs/demo, or runs/demo-quick with --quick)")
    parser.add_argument("--config", help="demo config: a path, or a shipped config's name "
                        "(default demo/demo.yaml)")
    parser.add_argument("overrides", nargs="*", metavar="key=value",
                        help="demo config overrides, e.g. eval.fid_samples=500 "
                             "autoencoder.overrides.train.steps=100")
    parser.set_defaults(func=run, config_of=config_of)
