"""One command-line grammar for every verb: options and ``key=value`` overrides in any order,
``--print-config`` wherever a verb has a config, a suggestion for a misspelt key, hints in the
command-line form, and help text without reStructuredText markup."""
from __future__ import annotations

import argparse
import re
import subprocess
import sys
from dataclasses import dataclass, field

import pytest

from fae import cli
from fae.cli import build_parser, main, parse_args, subcommands
from fae.config import load_config, yaml_load
from fae.errors import ConfigError, DataError, WeightsNotFoundError

OVERRIDES = ["a.b=1", "c=[1,2]", "d.e-f=x=y"]
# verb words -> positional words the verb needs after them
POSITIONALS = {("train",): ["generator"], ("experiment",): ["time-shift"]}


def _leaves(parser: argparse.ArgumentParser, words: tuple[str, ...] = ()):
    """(verb words, parser) of every parser that takes key=value overrides."""
    children = subcommands(parser)
    if any(action.dest == "overrides" for action in parser._actions):
        yield words, parser
    for name, child in children.items():
        yield from _leaves(child, words + (name,))


def _option_groups(parser: argparse.ArgumentParser) -> list[list[str]]:
    """One token group per option of ``parser``: the flag alone, or the flag and a value (a value
    with '=' in it where the option takes text, so it must not be mistaken for an override; one
    option written as --opt=value)."""
    groups = []
    for action in parser._actions:
        flag = action.option_strings[0] if action.option_strings else None
        if flag in (None, "-h", "--print-config"):
            continue
        if action.nargs == 0:
            groups.append([flag])
        elif action.choices:
            groups.append([flag, str(list(action.choices)[-1])])
        elif action.type is int:
            groups.append([flag, "3"])
        else:
            groups.append([flag, "v=1.npz"])
    text = next((g for g in groups if g[-1] == "v=1.npz"), None)
    if text is not None:  # --opt=value: one token, the value after the first '='
        groups[groups.index(text)] = [f"{text[0]}=w=2.npz"]
    return groups


def _parsed(argv: list[str]) -> dict:
    args = parse_args(build_parser(argv), argv)
    return {key: value for key, value in vars(args).items() if not callable(value)}


LEAVES = list(_leaves(build_parser()))


def test_every_verb_with_a_config_is_covered():
    names = {" ".join(words) for words, _ in LEAVES}
    assert names == {"demo", "experiment", "train", "plan", "cache-latents", "sample", "eval fid",
                     "eval ref-stats", "eval probe", "eval retrieval", "eval recon", "eval coco", "viz patches"}


@pytest.mark.parametrize("words, parser", LEAVES, ids=[" ".join(w) for w, _ in LEAVES])
def test_options_and_overrides_in_any_order_parse_alike(words, parser):
    head = list(words) + POSITIONALS.get(words, [])
    groups = _option_groups(parser)
    options = [token for group in groups for token in group]
    interleaved = []
    for i, group in enumerate(groups):
        interleaved += group + OVERRIDES[i:i + 1]
    interleaved += OVERRIDES[len(groups):]
    orders = [head + OVERRIDES + options, head + interleaved, head + options + OVERRIDES,
              list(words) + OVERRIDES[:1] + POSITIONALS.get(words, []) + options + OVERRIDES[1:]]
    parsed = [_parsed(argv) for argv in orders]
    assert all(p == parsed[0] for p in parsed[1:]), orders
    assert parsed[0]["overrides"] == OVERRIDES
    values = set(map(str, parsed[0].values()))
    assert ("v=1.npz" in values) == any(g[-1] == "v=1.npz" for g in groups)
    assert ("w=2.npz" in values) == any(g[0].endswith("=w=2.npz") for g in groups)


def test_the_issue_command_and_abbreviations():
    args = parse_args(build_parser(["sample"]), ["sample", "num=4", "--out", "t.npz", "sampling.steps=5",
                                                 "--batch", "8", "--grid=g=1.png"])
    assert (args.out, args.batch_size, args.grid) == ("t.npz", 8, "g=1.png")
    assert args.overrides == ["num=4", "sampling.steps=5"]


def test_a_word_that_is_not_key_value_is_still_an_error(capsys):
    assert main(["train", "autoencoder", "train.lr", "--dry-run"]) == 2
    assert "override 'train.lr' is not of the form key=value" in capsys.readouterr().err


@pytest.mark.parametrize("argv", [["sample", "num=2", "--nmu", "3"], ["backbones", "x=1"]])
def test_an_unknown_option_or_a_stray_override_is_still_refused(argv, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    assert f"unrecognized arguments: {argv[-2] if argv[0] == 'sample' else 'x=1'}" in capsys.readouterr().err


def _printed(argv: list[str], capsys) -> dict:
    assert main(argv + ["--print-config"]) == 0
    return yaml_load(capsys.readouterr().out)


def test_print_config_of_train_and_plan(tmp_path, capsys):
    run_dir = tmp_path / "run"
    cfg = _printed(["train", "generator", "model.depth=3", "--dry-run", f"train.run_dir={run_dir}",
                    "train.optim.lr=2e-4"], capsys)
    assert (cfg["model"]["depth"], cfg["train"]["optim"]["lr"], cfg["train"]["run_dir"]) == (3, 2e-4, str(run_dir))
    assert cfg["train"]["batch_size"] == 512  # a default the command line did not set
    assert not run_dir.exists()
    cfg = _printed(["plan", "train.steps=7", "--stage", "generator", "--gpus", "2", "model.heads=4"], capsys)
    assert (cfg["train"]["steps"], cfg["model"]["heads"]) == (7, 4)


def test_print_config_of_sample_applies_file_overrides_and_flags(tmp_path, capsys):
    config = tmp_path / "s.yaml"
    config.write_text("num: 10\nseed: 5\nsampling:\n  cfg_scale: 2.0\n")
    out = tmp_path / "t.npz"
    cfg = _printed(["sample", "num=4", "--config", str(config), "--out", str(out), "sampling.steps=5",
                    "--seed", "9"], capsys)
    assert (cfg["num"], cfg["seed"], cfg["out"]) == (4, 9, str(out))
    assert cfg["sampling"] == {"cfg_scale": 2.0, "steps": 5}
    assert cfg["batch_size"] == 64 and not out.exists()


def test_print_config_of_eval_fid_demo_and_experiment(tmp_path, capsys):
    cfg = _printed(["eval", "fid", "metrics=[fid]", "--samples", "s.npz", "--ref", "r.npz", "pr_k=5"], capsys)
    assert (cfg["samples"], cfg["ref"], cfg["metrics"], cfg["pr_k"]) == ("s.npz", "r.npz", ["fid"], 5)
    demo = tmp_path / "demo"
    cfg = _printed(["demo", "eval.fid_samples=50", "--quick", "--out", str(demo)], capsys)
    assert cfg["eval"]["fid_samples"] == 50
    assert cfg["autoencoder"]["overrides"]["train"]["steps"] == 300  # the quick list applied
    assert not demo.exists()
    cfg = _printed(["experiment", "time-shift", "seeds=[1]", "--out", str(tmp_path / "x")], capsys)
    assert cfg["experiment"]["seeds"] == [1] and "no-shift" in cfg["arm_differences"]
    assert not (tmp_path / "x").exists()


def test_verbs_without_a_config_do_not_offer_print_config():
    parser = subcommands(build_parser(["backbones"]))["backbones"]
    assert "--print-config" not in parser.format_help()


@pytest.mark.parametrize("argv, message", [
    (["sample", "sampling.step=5"], "unknown config key 'sampling.step'; did you mean 'sampling.steps'?"),
    (["train", "generator", "trian.steps=3"], "unknown config key 'trian'; did you mean 'train'?"),
    (["train", "generator", "lr=3e-4"], "unknown config key 'lr'; did you mean 'train.optim.lr'?"),
    (["train", "autoencoder", "model.encoder_kind=linear"],
     "unknown config key 'model.encoder_kind'; did you mean 'model.encoder.kind'?"),
    (["train", "generator", "zzz=1"], "unknown config key 'zzz' (known keys here: data, eval,"),
    (["train", "generator", "train.steps=ten"], "config key 'train.steps': expected an integer, got 'ten'"),
])
def test_an_unknown_key_suggests_the_closest_known_one(argv, message, capsys):
    assert main(argv + ["--print-config"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"fae: error: {message}"), err


@dataclass
class Inner:
    width: int = 1


@dataclass
class Outer:
    inner: Inner | None = field(default_factory=Inner)
    depth: int = 2


def test_suggestion_in_a_plain_schema():
    with pytest.raises(ConfigError, match=r"^unknown config key 'inner\.widht'; did you mean 'inner\.width'\?$"):
        load_config(Outer, None, ["inner.widht=3"])
    with pytest.raises(ConfigError, match=r"^unknown config key 'width'; did you mean 'inner\.width'\?$"):
        load_config(Outer, None, ["width=3"])


def test_hints_name_the_command_line_keys(tmp_path):
    from fae.backbones import load_backbone
    from fae.data.datasets import DataConfig, build_dataset

    with pytest.raises(WeightsNotFoundError, match=r"Set backbone\.weights=<local folder or file>"):
        load_backbone("dinov2-s14", weights=str(tmp_path / "missing"))
    with pytest.raises((DataError, ConfigError)) as info:
        build_dataset(DataConfig(name="fashion-mnist", root=str(tmp_path)))
    assert "set data.root=<folder>" in str(info.value)
    assert not re.search(r"(?<![\w.])(root|weights)=", str(info.value))  # no bare Python keyword


def _all_help(parser: argparse.ArgumentParser, words: tuple[str, ...] = ()):
    yield words, parser.format_help()
    for name, child in subcommands(parser).items():
        yield from _all_help(child, words + (name,))


def test_help_has_no_restructuredtext():
    helps = dict(_all_help(build_parser()))
    assert len(helps) >= 17  # fae, its 9 verbs, the 6 eval and 1 viz sub-verbs
    for words, text in helps.items():
        for markup in ("``", ":class:", ":func:", ":data:", ":meth:", "::\n"):
            assert markup not in text, (words, markup)
    assert "\nfae train <stage> --config FILE" in helps[("train",)]  # was ``fae train <stage> ...``


def test_plain_keeps_the_text_of_literals_and_roles():
    assert cli.plain("``x`` and :func:`fae.a.b` or :class:`~fae.C`, in Python::\n") == \
        "x and fae.a.b or fae.C, in Python:\n"


def test_fae_help_imports_no_verb_module():
    code = ("import sys\nfrom fae.cli import main\ntry:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
            "print(sorted(m for m in sys.modules if m.startswith(('fae.commands', 'fae.demo', 'torch'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip().splitlines()[-1] == "[]"
