"""The typed config system: strict keys, types, overrides that keep section defaults."""
from dataclasses import dataclass, field
from typing import Literal

import pytest

from fae.config import check_choices, load_config, save_yaml
from fae.errors import ConfigError
from fae.training.config import TrainConfig


@dataclass
class Model:
    width: int = 8
    kind: Literal["a", "b"] = "a"
    dropout: float | None = None


@dataclass
class Run:
    model: Model = field(default_factory=lambda: Model(width=32))
    train: TrainConfig = field(default_factory=lambda: TrainConfig(steps=1_000_000, batch_size=1024))


def test_partial_override_keeps_the_sections_own_defaults():
    cfg = load_config(Run, None, ["train.run_dir=runs/x", "train.optim.lr=3e-4"])
    assert cfg.train.steps == 1_000_000 and cfg.train.batch_size == 1024
    assert cfg.train.run_dir == "runs/x" and cfg.train.optim.lr == pytest.approx(3e-4)
    assert cfg.model.width == 32


def test_yaml_file_round_trip_and_scientific_floats(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("model:\n  width: 4\n  kind: b\ntrain:\n  optim:\n    lr: 1e-4\n")
    cfg = load_config(Run, path)
    assert (cfg.model.width, cfg.model.kind, cfg.train.optim.lr) == (4, "b", 1e-4)
    save_yaml(cfg, tmp_path / "saved.yaml")
    assert load_config(Run, tmp_path / "saved.yaml") == cfg


@pytest.mark.parametrize("override, message", [
    ("model.widht=3", "unknown config key 'model.widht'"),
    ("model.width=three", "config key 'model.width': expected an integer"),
    ("model.kind=c", "config key 'model.kind'"),
    ("train.optim.betas=[0.9]", "config key 'train.optim.betas'"),
    ("train.steps=-1", "train.steps"),
    ("nokey", "key=value"),
])
def test_bad_keys_and_types_name_the_key(override, message):
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("(", r"\(")):
        load_config(Run, None, [override])


def test_optional_and_missing_file(tmp_path):
    assert load_config(Run, None, ["model.dropout=0.1"]).model.dropout == pytest.approx(0.1)
    assert load_config(Run, None, ["model.dropout=null"]).model.dropout is None
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(Run, tmp_path / "missing.yaml")


def test_an_optional_section_keeps_the_dotted_key_in_its_errors():
    from dataclasses import dataclass

    @dataclass
    class Inner:
        size: int = 1

    @dataclass
    class Outer:
        inner: Inner | None = None

    assert load_config(Outer, None, ["inner.size=3"]).inner.size == 3
    with pytest.raises(ConfigError, match=r"unknown config key 'inner\.sise'"):
        load_config(Outer, None, ["inner.sise=3"])
    with pytest.raises(ConfigError, match=r"'inner\.size'.*expected an integer"):
        load_config(Outer, None, ["inner.size=big"])


def test_yaml_reads_1_2_floats_and_keeps_strings_that_only_look_alike():
    from fae.config import yaml_dump, yaml_load

    assert yaml_load("a: 1e-4\nb: .5\nc: 2.\nd: -3E2") == {"a": 1e-4, "b": 0.5, "c": 2.0, "d": -300.0}
    assert yaml_load("a: .\nb: '0.0'\nc: 1e\nd: -.") == {"a": ".", "b": "0.0", "c": "1e", "d": "-."}
    for text in ("1e-4", "0.0", ".", "abc"):
        assert yaml_load(yaml_dump({"v": text})) == {"v": text}


def test_a_config_built_in_python_gets_the_files_choice_check():
    """check_choices (what every validate calls) refuses a Literal field outside its choices with
    the message a file would get, and lets the choices through."""
    with pytest.raises(ConfigError) as from_file:
        load_config(Run, None, ["model.kind=c"])
    with pytest.raises(ConfigError) as from_python:
        check_choices(Model(kind="c"), "model")
    assert str(from_python.value) == str(from_file.value) == "config key 'model.kind': 'c' is not one of 'a', 'b'"
    check_choices(Model(kind="b"), "model")


def test_text_embeddings_choice_is_checked():
    from fae.text.registry import TextEncoderConfig

    with pytest.raises(ConfigError, match="config key 'text.embeddings': 'disk' is not one of 'cache', 'online'"):
        TextEncoderConfig(embeddings="disk").validate()
    TextEncoderConfig(embeddings="online").validate()
