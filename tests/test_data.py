"""Datasets: Fashion-MNIST facts, ImageNet-layout folders with the ADM crop, corrupt files."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from fae.config import load_config
from fae.data import DataConfig, build_dataset
from fae.data.transforms import center_crop_arr
from fae.errors import ConfigError, DataError


@pytest.fixture(scope="module")
def fashion_train():
    return build_dataset(DataConfig(name="fashion-mnist"))


def test_fashion_mnist_sizes_balance_and_mean(fashion_train):
    test = build_dataset(DataConfig(name="fashion-mnist", split="train"), split="test")
    assert len(fashion_train) == 60_000 and len(test) == 10_000
    assert torch.bincount(fashion_train.labels).tolist() == [6000] * 10
    image, label = fashion_train[0]
    assert image.shape == (1, 28, 28) and image.dtype == torch.uint8 and label == 9
    mean = fashion_train.images.float().mean().item() / 255
    assert abs(mean - 0.286) < 0.001, mean


def test_fashion_mnist_crop_flip_and_limit():
    cfg = load_config(DataConfig, None, ["limit=4", "image_size=32", "flip=true"])
    data = build_dataset(cfg)
    assert len(data) == 4
    torch.manual_seed(0)
    seen = {tuple(data[1][0].sum(dim=(0, 1)).tolist()) for _ in range(30)}
    assert data[1][0].shape == (1, 32, 32)
    assert len(seen) == 2  # both the image and its mirror come out


def _png(path, array):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def _make_folder(root):
    rng = np.random.default_rng(0)
    for cls in ("zebra", "apple"):  # sorted: apple -> 0, zebra -> 1
        for i in range(3):
            _png(root / "train" / cls / f"{i}.png", rng.integers(0, 256, (40 + i, 50, 3), dtype=np.uint8))
    return root


def test_imagefolder_labels_from_sorted_class_names(tmp_path):
    root = _make_folder(tmp_path / "imnet")
    data = build_dataset(DataConfig(name="imagefolder", root=str(root), image_size=16))
    assert data.classes == ["apple", "zebra"] and len(data) == 6
    assert [data[i][1] for i in range(6)] == [0, 0, 0, 1, 1, 1]
    image, _ = data[4]
    assert image.shape == (3, 16, 16) and image.dtype == torch.uint8
    # limit keeps evenly spaced items, so every class is still present
    limited = build_dataset(DataConfig(name="imagefolder", root=str(root), limit=2, image_size=16))
    assert sorted(limited[i][1] for i in range(2)) == [0, 1]
    # without image_size the stored size is kept
    raw = build_dataset(DataConfig(name="imagefolder", root=str(root)))
    assert raw[1][0].shape == (3, 41, 50)


def test_adm_center_crop_halves_then_crops_the_center():
    # 64 x 128 image: black outer quarters, white middle half. To 32 px: one BOX halving
    # (64 >= 2 * 32) -> 32 x 64, no further resize, crop columns 16..48 = the white middle.
    arr = np.zeros((64, 128, 3), dtype=np.uint8)
    arr[:, 32:96] = 255
    out = center_crop_arr(Image.fromarray(arr), 32)
    assert out.shape == (32, 32, 3) and (out == 255).all()
    # upsampling path: a 10 x 20 gradient to 16 px keeps the left-to-right order
    grad = np.tile(np.linspace(0, 255, 20, dtype=np.uint8), (10, 1))
    out = center_crop_arr(Image.fromarray(grad), 16)
    assert out.shape == (16, 16) and (np.diff(out[8].astype(int)) >= 0).all()


def test_unlabelled_folder_is_recursive_with_label_minus_one(tmp_path):
    root = _make_folder(tmp_path / "imgs")
    data = build_dataset(DataConfig(name="folder", root=str(root / "train"), image_size=8))
    assert len(data) == 6 and {data[i][1] for i in range(6)} == {-1}


def _truncate(path):
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 2])


def test_truncated_png_names_the_file_or_is_skipped_with_a_warning(tmp_path):
    root = _make_folder(tmp_path / "imnet")
    bad = root / "train" / "apple" / "1.png"
    _truncate(bad)
    data = build_dataset(DataConfig(name="imagefolder", root=str(root), image_size=16))
    with pytest.raises(DataError, match=r"apple/1\.png"):
        data[1]
    lenient = build_dataset(DataConfig(name="imagefolder", root=str(root), image_size=16, skip_corrupt=True))
    with pytest.warns(UserWarning, match=r"apple/1\.png.*1 corrupt file"):
        image, label = lenient[1]
    expected, _ = lenient[2]  # replaced by the next readable image, not a blank one
    assert torch.equal(image, expected) and label == 0


def test_config_errors_name_the_key(tmp_path):
    with pytest.raises(ConfigError, match="data.root"):
        DataConfig(name="imagefolder")
    with pytest.raises(ConfigError, match="'nme'"):
        load_config(DataConfig, None, ["nme=folder"])
    with pytest.raises(ConfigError, match="'name'"):
        load_config(DataConfig, None, ["name=cifar"])
    with pytest.raises(DataError, match="does not exist"):
        build_dataset(DataConfig(name="imagefolder", root=str(tmp_path / "missing")))
