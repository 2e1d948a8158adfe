"""data.decode: draft (libjpeg's reduced-scale decode) against the exact ADM path, and the loader
worker count fae plan asks for."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from fae.config import load_config
from fae.data.datasets import DataConfig, build_dataset
from fae.data.imagefolder import LOADER_IMAGES_PER_S, workers_needed
from fae.errors import ConfigError


def photo(width: int, height: int) -> Image.Image:
    """A smooth colour image with some edges (JPEG-friendly, like a photo)."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    rgb = np.stack([128 + 100 * np.sin(x / 37.0), 128 + 100 * np.cos(y / 23.0), (x + y) % 256], axis=-1)
    rgb[height // 3:height // 2, width // 4:width // 2] = 240  # a block with sharp edges
    return Image.fromarray(rgb.clip(0, 255).astype(np.uint8))


@pytest.fixture
def folder(tmp_path):
    sizes = {"big": (1203, 901), "huge": (2400, 1800), "small": (180, 120)}  # short side < 2 x 64: no reduced decode
    for i, (name, (w, h)) in enumerate(sizes.items()):
        (tmp_path / "train" / f"c{i}").mkdir(parents=True)
        photo(w, h).save(tmp_path / "train" / f"c{i}" / f"{name}.JPEG", quality=90)
    (tmp_path / "train" / "c3").mkdir()
    photo(1100, 800).save(tmp_path / "train" / "c3" / "lossless.png")
    return tmp_path


def items(root, decode: str) -> list:
    data = build_dataset(DataConfig(name="imagefolder", root=str(root), image_size=64, decode=decode))
    return [data[i][0] for i in range(len(data))]


def test_draft_crops_agree_with_the_exact_path(folder):
    exact, draft = items(folder, "exact"), items(folder, "draft")
    for a, b in zip(exact, draft):
        assert a.shape == b.shape == (3, 64, 64) and b.dtype == a.dtype
    diff = [(a.int() - b.int()).abs() for a, b in zip(exact, draft)]
    big, huge, small, lossless = diff  # sorted by class folder: c0 big, c1 huge, c2 small, c3 png
    # reduced-scale decodes: close (tolerance: a mean of 4 grey levels per image; on 334 large
    # photo-like JPEGs bench/loader_throughput.py measured a median of 1.2 and a worst of 3.2)
    assert big.float().mean() < 4.0 and huge.float().mean() < 4.0
    assert big.any() or huge.any()  # ... but decoded differently
    assert not small.any() and not lossless.any()  # small JPEGs and other formats: identical


def test_decode_is_a_config_key_for_folders_only(tmp_path):
    cfg = load_config(DataConfig, None, ["name=imagefolder", f"root={tmp_path}", "decode=draft"])
    assert cfg.decode == "draft"
    with pytest.raises(ConfigError, match="data.decode"):
        DataConfig(name="fashion-mnist", decode="draft")
    with pytest.raises(ConfigError):
        load_config(DataConfig, None, ["decode=fast"])


def test_workers_needed():
    assert workers_needed(0.0) == 1
    assert workers_needed(1000.0, 100.0, headroom=1.0) == 10
    assert workers_needed(1000.0, 100.0) == 13  # 1.25 headroom, rounded up
    assert workers_needed(550.0, decode="draft") <= workers_needed(550.0)
    assert LOADER_IMAGES_PER_S["draft"] > LOADER_IMAGES_PER_S["exact"] > 0
    with pytest.raises(ValueError):
        workers_needed(100.0, decode="fast")
