"""``base:`` in a config file: the file is laid over the one it names (``fae.config.read_yaml``)."""
from dataclasses import dataclass, field

import pytest

from fae.config import load_config, read_yaml
from fae.errors import ConfigError


@dataclass
class Model:
    width: int = 8
    channels: int = 4
    layers: list[int] = field(default_factory=lambda: [1, 2])


@dataclass
class Run:
    model: Model = field(default_factory=Model)
    name: str = "run"


def _write(folder, name: str, text: str):
    path = folder / name
    path.write_text(text)
    return path


def test_a_child_changes_only_what_it_states(tmp_path):
    _write(tmp_path, "parent.yaml", "model:\n  width: 16\n  channels: 32\n  layers: [3, 4, 5]\nname: parent\n")
    child = _write(tmp_path, "child.yaml", "base: parent.yaml\nmodel:\n  channels: 48\n  layers: [7]\n")
    cfg = load_config(Run, child, ["name=override"])
    assert (cfg.model.width, cfg.model.channels, cfg.model.layers, cfg.name) == (16, 48, [7], "override")
    assert "base" not in read_yaml(child)


def test_a_chain_resolves_beside_each_file_and_shipped_names_work(tmp_path):
    (tmp_path / "sub").mkdir()
    _write(tmp_path, "root.yaml", "model:\n  width: 2\n")
    _write(tmp_path / "sub", "middle.yaml", "base: ../root.yaml\nmodel:\n  channels: 3\n")
    leaf = _write(tmp_path, "leaf.yaml", "base: sub/middle.yaml\nname: leaf\n")
    assert read_yaml(leaf) == {"model": {"width": 2, "channels": 3}, "name": "leaf"}
    shipped = _write(tmp_path, "paper.yaml", "base: imagenet256/sit_xl1.yaml\nmodel:\n  latent_channels: 7\n")
    data = read_yaml(shipped)
    assert data["model"]["latent_channels"] == 7 and data["model"]["style"] == "sit"


def test_a_cycle_and_a_missing_or_bad_base_name_the_file(tmp_path):
    a = _write(tmp_path, "a.yaml", "base: b.yaml\nname: a\n")
    _write(tmp_path, "b.yaml", "base: a.yaml\nname: b\n")
    with pytest.raises(ConfigError, match="cycle.*a.yaml -> b.yaml -> a.yaml"):
        read_yaml(a)
    missing = _write(tmp_path, "m.yaml", "base: nowhere.yaml\n")
    with pytest.raises(ConfigError, match="'nowhere.yaml' does not exist"):
        read_yaml(missing)
    bad = _write(tmp_path, "n.yaml", "base: 3\n")
    with pytest.raises(ConfigError, match="'base' must name a config file, got 3"):
        read_yaml(bad)
