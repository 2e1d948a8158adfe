"""``fae <verb>``: the command line. Each verb is a module with ``configure(parser)`` (its options
and ``func``); the table below names them with their one-line help, and only the module of the
verb being run is imported, so ``fae --help`` imports no model code.

One grammar for every verb: options and ``key=value`` overrides in any order (:func:`split_overrides`
takes the overrides out before argparse, which cannot intermix positionals with sub-commands), and
``--print-config`` on every verb that has a config (a verb sets ``config_of(args)``, the config
its run would use; ``fae backbones`` has none and does not offer the flag). Help text is shown
without the docstrings' reStructuredText markup.

This is the entry point, so it owns the process group: under ``torchrun`` every verb runs inside
``fae.distributed.process_group()``; verbs and the library never start or stop it themselves.
"""
from __future__ import annotations

import argparse
import importlib
import re
import sys
from collections.abc import Iterator

from fae import __version__
from fae.config import to_dict, yaml_dump
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


# a command-line token that is a config override: a dotted key, then '='
OVERRIDE = re.compile(r"^[A-Za-z_][\w.-]*=")
# reStructuredText in docstrings that help text shows: ``literal`` and :role:`target`
_RST_LITERAL = re.compile(r"``(.+?)``", re.S)
_RST_ROLE = re.compile(r":[a-z]+:`~?([^`]+)`")
GRAMMAR = ("Every verb but `backbones` takes --config FILE, key=value overrides anywhere among its options "
           "(e.g. fae sample num=4 --out t.npz sampling.steps=5) and --print-config (print the resolved "
           "config as YAML and exit). `fae VERB --help` lists a verb's options.")


def _is_word(token: str) -> bool:
    """A token that can name a verb: neither an option nor a key=value override."""
    return not token.startswith("-") and not OVERRIDE.match(token)


def _chosen_verb(argv: list[str]) -> str | None:
    """The verb the command line runs (its first word that is not an option), if any."""
    return next((a for a in argv if _is_word(a)), None)


def subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    """The sub-command parsers of ``parser`` by name (empty for a leaf). argparse has no public
    accessor; the sub-parsers action is the documented ``add_subparsers`` return value's class."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def walk(parser: argparse.ArgumentParser) -> Iterator[argparse.ArgumentParser]:
    """``parser`` and every parser below it (verbs, then their sub-verbs)."""
    yield parser
    for child in subcommands(parser).values():
        yield from walk(child)


def plain(text: str | None) -> str | None:
    """Help text without reStructuredText markup: ``x`` -> x, :func:`f` -> f."""
    if not text:
        return text
    return _RST_ROLE.sub(r"\1", _RST_LITERAL.sub(r"\1", text)).replace("::\n", ":\n")


def _clean_help(parser: argparse.ArgumentParser) -> None:
    """Strip docstring markup from the description, epilog and option help of ``parser``."""
    parser.description, parser.epilog = plain(parser.description), plain(parser.epilog)
    for action in parser._actions:
        action.help = plain(action.help)
        for choice in getattr(action, "_choices_actions", []):  # one help line per sub-command
            choice.help = plain(choice.help)


def _add_print_config(parser: argparse.ArgumentParser) -> None:
    """``--print-config`` on a verb whose module set ``config_of`` (its config, resolved from args)."""
    if parser.get_default("config_of") is not None:
        parser.add_argument("--print-config", action="store_true", help="print the resolved config "
                            "(file, then overrides, over the defaults) as YAML and exit without running")


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    """The parser, with the full options of the verb in ``argv`` (all verbs when ``argv`` is None)."""
    parser = argparse.ArgumentParser(prog="fae", description="Feature Auto-Encoder: frozen visual "
                                     "encoders as latent spaces for image generation.", epilog=GRAMMAR)
    parser.add_argument("--version", action="version", version=f"fae {__version__}")
    sub = parser.add_subparsers(dest="verb", metavar="VERB")
    chosen = _chosen_verb(argv) if argv is not None else None
    for verb, (module, help_text) in VERBS.items():
        verb_parser = sub.add_parser(verb, help=help_text, description=help_text)
        if argv is None or verb == chosen:
            importlib.import_module(module).configure(verb_parser)
            for each in walk(verb_parser):
                _add_print_config(each)
                _clean_help(each)
    return parser


def _leaf(parser: argparse.ArgumentParser, argv: list[str]) -> tuple[argparse.ArgumentParser, int]:
    """The parser of the (sub-)verb ``argv`` runs, and the index just after its first verb word
    (len(argv) when it names none)."""
    start, after_verb = 0, len(argv)
    while children := subcommands(parser):
        index = next((i for i in range(start, len(argv)) if _is_word(argv[i])), None)
        if index is None or argv[index] not in children:
            break
        parser, start = children[argv[index]], index + 1
        after_verb = min(after_verb, start)
    return parser, after_verb


def _values_taken(parser: argparse.ArgumentParser, token: str, following: list[str]) -> int:
    """How many of the ``following`` tokens option ``token`` takes as its values (0 for a
    positional, a flag or ``--opt=value``). Long options may be abbreviated, as argparse allows."""
    if not token.startswith("-") or "=" in token:
        return 0
    options = {s: a for a in parser._actions for s in a.option_strings}
    matches = [s for s in options if s == token] or [s for s in options if s.startswith(token) and token.startswith("--")]
    if len(matches) != 1:
        return 0  # unknown or ambiguous: argparse reports it
    nargs = options[matches[0]].nargs
    if nargs is None:
        return 1
    if isinstance(nargs, int):
        return nargs
    if nargs == argparse.OPTIONAL:
        return int(bool(following) and not following[0].startswith("-"))
    return next((i for i, t in enumerate(following) if t.startswith("-")), len(following))  # *, +


def split_overrides(parser: argparse.ArgumentParser, argv: list[str]) -> tuple[list[str], list[str]]:
    """``argv`` -> (the tokens for argparse, the ``key=value`` overrides in their order): after the
    verb, every token that looks like ``key=value`` and is not an option's value is an override,
    wherever it stands among the options. Only for a verb that takes overrides."""
    leaf, start = _leaf(parser, argv)
    if not any(action.dest == "overrides" for action in leaf._actions):
        return list(argv), []
    rest, overrides, i = list(argv[:start]), [], start
    while i < len(argv):
        token = argv[i]
        if OVERRIDE.match(token):
            overrides.append(token)
            i += 1
            continue
        taken = _values_taken(leaf, token, argv[i + 1:])
        rest += argv[i:i + 1 + taken]
        i += 1 + taken
    return rest, overrides


def parse_args(parser: argparse.ArgumentParser, argv: list[str]) -> argparse.Namespace:
    """``fae ARGV`` parsed: options and ``key=value`` overrides in any order (``args.overrides``)."""
    rest, overrides = split_overrides(parser, argv)
    args, extra = parser.parse_known_args(rest)
    if not hasattr(args, "overrides") or any(token.startswith("-") for token in extra):
        if extra:
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        return args
    # words that are not key=value (after all positionals) stay overrides: their error names them
    args.overrides = overrides + list(args.overrides or []) + extra
    return args


def print_config(args: argparse.Namespace) -> int:
    """``--print-config``: the config the verb would run with, as YAML (nothing is computed)."""
    print(yaml_dump(to_dict(args.config_of(args))), end="")
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser(argv)
    args = parse_args(parser, argv)
    if getattr(args, "func", None) is None:
        parser.print_help()
        return 2
    from fae import distributed  # the verb's module has imported torch by now

    try:
        if getattr(args, "print_config", False):
            return print_config(args)
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
