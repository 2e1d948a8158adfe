"""One export format for every model: round trips, kind checks, and exports of the previous main.

``tests/fixtures/exports_e37566a`` was written by commit e37566a (``make_fixtures.py`` there), when
the FAE wrote ``"version"``, the pixel decoder ``"model": "fae-pixel-decoder"`` and the generator no
version at all. Those folders must still load and compute exactly what they computed then.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from fae.autoencoder import FAE
from fae.autoencoder.pixel_decoder import PixelDecoder
from fae.errors import CheckpointError
from fae.export import read_export_config
from fae.generation import Generator
from fae.generation.samplers import SamplerConfig

LEGACY = Path(__file__).parent / "fixtures" / "exports_e37566a"


def test_exports_of_the_previous_main_load_and_compute_the_same():
    expected = torch.load(LEGACY / "expected.pt", weights_only=True)
    fae = FAE.from_pretrained(LEGACY / "fae")
    z = fae.encode(expected["images"])
    torch.testing.assert_close(z, expected["z"], rtol=0, atol=1e-6)
    torch.testing.assert_close(fae.decode(z), expected["decoded"], rtol=0, atol=1e-6)
    assert isinstance(PixelDecoder.from_pretrained(LEGACY / "pixel_decoder"), PixelDecoder)
    generator = Generator.from_pretrained(LEGACY / "generator")
    sample = generator.sample(range(2), torch.tensor([0, 2]), seed=0, config=SamplerConfig(steps=3))
    torch.testing.assert_close(sample, expected["sample"], rtol=0, atol=1e-6)


@pytest.mark.parametrize("name,cls", [("fae", FAE), ("pixel_decoder", PixelDecoder), ("generator", Generator)])
def test_every_export_writes_the_one_format_key_and_round_trips(tmp_path, name, cls):
    model = cls.from_pretrained(LEGACY / name)
    out = model.save_pretrained(tmp_path / name)
    config = json.loads((out / "config.json").read_text())
    assert config["format"] == cls.export_format and config["format_version"] == 1
    assert "version" not in config and config.get("model") != "fae-pixel-decoder"
    again = cls.from_pretrained(tmp_path / name)
    for (k, a), (k2, b) in zip(model.state_dict().items(), again.state_dict().items()):
        assert k == k2 and torch.equal(a, b), k


def test_wrong_kind_newer_version_and_damaged_files_name_the_problem(tmp_path):
    with pytest.raises(CheckpointError, match="holds a 'fae-generator' export, not a 'fae-autoencoder'"):
        FAE.from_pretrained(LEGACY / "generator")
    folder = tmp_path / "gen"
    shutil.copytree(LEGACY / "generator", folder)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "format_version": 7}))
    with pytest.raises(CheckpointError, match="format version 7.*reads up to 1"):
        Generator.from_pretrained(folder)
    (folder / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        read_export_config(folder)
    shutil.copytree(LEGACY / "pixel_decoder", tmp_path / "pd")
    (tmp_path / "pd" / "model.safetensors").write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="cannot read"):
        PixelDecoder.from_pretrained(tmp_path / "pd")
    with pytest.raises(CheckpointError, match="is missing"):
        FAE.from_pretrained(tmp_path / "nowhere")


def test_a_run_folder_loads_through_its_export_subfolder(tmp_path):
    shutil.copytree(LEGACY / "generator", tmp_path / "run" / "export")
    assert isinstance(Generator.from_pretrained(tmp_path / "run"), Generator)
