"""The probe's protocol (paper Table 1): DINOv2's evaluation transform for image folders (resize the
short side to 256, centre crop 224) against a crop computed by hand with PIL, and the zero-shot
head probe's labelled rows (reconstructed / pass_through / patch_mean_only) on a tiny random
DINOv2 with registers saved to a temp folder (no downloads)."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from fae.autoencoder import FAE, FAEConfig
from fae.backbones import load_backbone
from fae.backbones.preprocess import preprocess_images
from fae.backbones.registry import IMAGENET_MEAN, IMAGENET_STD
from fae.cli import main
from fae.config import from_dict
from fae.data.datasets import DataConfig, build_dataset
from fae.data.transforms import center_crop_arr, dinov2_eval_crop
from fae.errors import ConfigError, DataError
from fae.evaluation.config import ProbeConfig
from fae.evaluation.linear_head import LinearHead, patch_mean_half

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py

DIM, CLASSES = 32, 3  # the tiny DINOv2's width; the image folder's classes


def _random_image(width: int, height: int, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


def _gradient_image(width: int, height: int) -> Image.Image:
    """Red channel = the column index (so a crop's columns tell which part of the image it kept)."""
    columns = np.tile(np.arange(width, dtype=np.uint8)[None, :], (height, 1))  # [H, W], width <= 256
    return Image.fromarray(np.stack([columns, np.zeros_like(columns), np.zeros_like(columns)], -1))


# ------------------------------------------------------------------------- the DINOv2 transform


@pytest.mark.parametrize("size, resized, box", [
    ((320, 240), (341, 256), (58, 16, 282, 240)),    # landscape: long side int(256 * 320 / 240) = 341
    ((240, 320), (256, 341), (16, 58, 240, 282)),    # portrait
    ((50, 40), (320, 256), (48, 16, 272, 240)),      # smaller than 256: resized up, then cropped
    ((343, 256), (343, 256), (60, 16, 284, 240)),    # (343 - 224) / 2 = 59.5 rounds to 60 (half to even)
])
def test_dinov2_crop_is_resize_256_then_centre_crop_224(size, resized, box):
    image = _random_image(*size)
    expected = np.asarray(image.resize(resized, resample=Image.BICUBIC).crop(box))  # by hand, with PIL
    got = dinov2_eval_crop(image)
    assert got.shape == (224, 224, 3) and got.dtype == np.uint8
    np.testing.assert_array_equal(got, expected)


def test_dinov2_crop_keeps_seven_eighths_of_what_the_adm_path_keeps():
    image = _gradient_image(240, 180)  # columns 0..239; short side 180
    dinov2 = dinov2_eval_crop(image)[..., 0].astype(float)  # [224, 224]
    adm = center_crop_arr(image, 256)[..., 0].astype(float)  # [256, 256]: the backbone then resizes it to 224
    dinov2_span = dinov2[:, -1].mean() - dinov2[:, 0].mean()
    adm_span = adm[:, -1].mean() - adm[:, 0].mean()
    assert adm_span == pytest.approx(180, abs=2)  # the ADM crop keeps the whole short side
    assert dinov2_span / adm_span == pytest.approx(224 / 256, abs=0.01)  # ~14% narrower field of view
    adm_224 = preprocess_images(torch.from_numpy(np.ascontiguousarray(center_crop_arr(image, 256)))
                                .permute(2, 0, 1)[None], 224, (0.0,) * 3, (1 / 255,) * 3)
    assert (adm_224[0, 0] - torch.from_numpy(dinov2)).abs().mean() > 3  # the two paths differ


def test_a_224_backbone_takes_the_crop_unchanged_and_normalises_once():
    crop = torch.from_numpy(np.ascontiguousarray(dinov2_eval_crop(_random_image(320, 240)))).permute(2, 0, 1)
    got = preprocess_images(crop[None], 224, IMAGENET_MEAN, IMAGENET_STD)  # [1, 3, 224, 224]
    mean, std = torch.tensor(IMAGENET_MEAN).view(3, 1, 1), torch.tensor(IMAGENET_STD).view(3, 1, 1)
    torch.testing.assert_close(got[0], (crop.float() / 255 - mean) / std, rtol=0, atol=1e-6)


def _write_folder(root, sizes=((320, 240), (200, 260), (64, 48), (300, 300), (90, 120), (256, 200))):
    """An ImageNet-layout folder root/val/<class>/<i>.png of RGB images of mixed sizes (class i % 3)."""
    for i, size in enumerate(sizes):
        folder = root / "val" / f"c{i % CLASSES}"
        folder.mkdir(parents=True, exist_ok=True)
        _random_image(*size, seed=10 + i).save(folder / f"{i}.png")
    return root


def test_image_folder_items_are_the_dinov2_crop(tmp_path):
    root = _write_folder(tmp_path / "data")
    data = DataConfig(name="imagefolder", root=str(root), split="val")
    dataset = build_dataset(data, crop=dinov2_eval_crop)
    image, label = dataset[0]  # c0/0.png, 320 x 240
    expected = dinov2_eval_crop(Image.open(root / "val" / "c0" / "0.png").convert("RGB"))
    assert label == 0 and image.shape == (3, 224, 224)
    np.testing.assert_array_equal(image.permute(1, 2, 0).numpy(), expected)
    dataset.check_batchable()  # mixed sizes batch: every item is 224 x 224
    with pytest.raises(ConfigError, match="folder datasets"):
        build_dataset(DataConfig(), crop=dinov2_eval_crop)  # Fashion-MNIST keeps its own path


def test_probe_config_defaults_to_dinov2_and_refuses_the_adm_keys_with_it(tmp_path):
    assert ProbeConfig().preprocess == "dinov2"
    folder = {"name": "imagefolder", "root": str(tmp_path)}
    with pytest.raises(ConfigError, match="data.image_size.*preprocess=adm"):
        from_dict(ProbeConfig, {"data": {**folder, "image_size": 256}})
    with pytest.raises(ConfigError, match="data.decode"):
        from_dict(ProbeConfig, {"data": {**folder, "decode": "draft"}})
    assert from_dict(ProbeConfig, {"data": {**folder, "image_size": 256}, "preprocess": "adm"}).preprocess == "adm"
    assert from_dict(ProbeConfig, {"data": {"image_size": 64}}).data.image_size == 64  # fashion-mnist: as before


# ------------------------------------------------------------------- the zero-shot probe's rows


@pytest.fixture(scope="module")
def dinov2_reg(tmp_path_factory):
    """(folder, adapter) of a tiny random DINOv2 with 4 registers (28 px -> 2x2 patches of width 32)."""
    import transformers as tf  # heavy optional import, only for this fixture

    folder = tmp_path_factory.mktemp("hf") / "dinov2_reg"
    torch.manual_seed(0)
    config = tf.Dinov2WithRegistersConfig(image_size=28, patch_size=14, num_register_tokens=4, hidden_size=DIM,
                                          num_hidden_layers=1, num_attention_heads=2, intermediate_size=64)
    tf.Dinov2WithRegistersModel(config).eval().save_pretrained(folder)
    return folder, load_backbone("dinov2-reg", weights=str(folder))


def _export_fae(backbone, mode: str, folder) -> FAE:
    info = backbone.info
    torch.manual_seed(1)
    cfg = from_dict(FAEConfig, {"backbone": info.name, "resolution": info.resolution, "token_dim": info.dim,
                                "grid": list(info.grid), "extra_tokens": mode, "latent_channels": 4,
                                "extra_count": 5 if mode != "none" else None,  # CLS + 4 registers
                                "encoder": {"heads": 2, "head_dim": 16},
                                "decoder": {"depth": 1, "width": 32, "heads": 2}})
    fae = FAE(cfg).attach_backbone(backbone).eval()
    fae.save_pretrained(folder)
    return fae


def _head(tmp_path, name: str, cls_half: bool = True) -> LinearHead:
    """A random CLS + patch-mean head (weight [3, 64]), its CLS columns zero unless ``cls_half``."""
    gen = torch.Generator().manual_seed(5)
    weight, bias = torch.randn(CLASSES, 2 * DIM, generator=gen), torch.randn(CLASSES, generator=gen) * 0.1
    if not cls_half:
        weight[:, :DIM] = 0.0
    head = LinearHead(weight, bias)
    head.save(tmp_path / name)
    return head


def _probe(tmp_path, capsys, weights, fae_dir, head: str) -> tuple[dict, str]:
    args = ["eval", "probe", "--head", str(tmp_path / head), "--fae", str(fae_dir), f"weights={weights}",
            "data.name=imagefolder", f"data.root={tmp_path / 'data'}", "data.split=val", "batch_size=4",
            "progress=false", f"out={tmp_path / (head + '.json')}"]
    assert main(args) == 0
    printed = capsys.readouterr().out
    return json.loads(printed.splitlines()[0]), printed


def _brute_top1(head: LinearHead, features: torch.Tensor, labels: torch.Tensor) -> float:
    return float((head.logits(features).argmax(1) == labels).double().mean())


def test_head_probe_reports_the_three_labelled_rows(tmp_path, capsys, dinov2_reg):
    weights, backbone = dinov2_reg
    _write_folder(tmp_path / "data")
    fae = _export_fae(backbone, "reconstruct", tmp_path / "fae_rec")
    head = _head(tmp_path, "head.pth")
    result, printed = _probe(tmp_path, capsys, weights, tmp_path / "fae_rec", "head.pth")
    rows = ("raw", "reconstructed", "pass_through", "patch_mean_only", "raw_patch_mean_only")
    for row in rows:
        assert 0.0 <= result[f"top1_{row}"] <= result[f"top5_{row}"] <= 1.0
    assert result["preprocess"].startswith("dinov2") and result["extra_tokens"] == "reconstruct"
    assert "original CLS: not a reconstruction" in result["pass_through_note"]
    assert "note (pass_through): original CLS: not a reconstruction" in printed
    assert "headline" in result["reconstructed_note"]

    # brute force: the DINOv2 crop of each file, the backbone's tokens, the FAE's reconstruction
    dataset = build_dataset(DataConfig(name="imagefolder", root=str(tmp_path / "data"), split="val"),
                            crop=dinov2_eval_crop)
    images, labels = torch.stack([dataset[i][0] for i in range(len(dataset))]), torch.tensor(
        [dataset[i][1] for i in range(len(dataset))])
    with torch.no_grad():
        out = backbone.forward_all(images)
        rec = fae.reconstruct(out)
    mean = rec.patches.mean(1)
    expected = {"raw": torch.cat([out.cls, out.patches.mean(1)], 1), "reconstructed": torch.cat([rec.cls, mean], 1),
                "pass_through": torch.cat([out.cls, mean], 1),
                "patch_mean_only": torch.cat([torch.zeros_like(out.cls), mean], 1)}
    assert not torch.allclose(rec.cls, out.cls)  # the reconstructed CLS is not the original
    for row, features in expected.items():
        assert result[f"top1_{row}"] == pytest.approx(_brute_top1(head, features, labels), abs=1e-12), row
    assert result["top1_gap"] == pytest.approx(result["top1_raw"] - result["top1_reconstructed"])


def test_without_extra_tokens_the_headline_row_is_absent_and_explained(tmp_path, capsys, dinov2_reg):
    weights, backbone = dinov2_reg
    _write_folder(tmp_path / "data")
    _export_fae(backbone, "none", tmp_path / "fae_none")
    _head(tmp_path, "head.pth")
    result, printed = _probe(tmp_path, capsys, weights, tmp_path / "fae_none", "head.pth")
    assert "top1_reconstructed" not in result and "top1_gap" not in result
    assert "model.extra_tokens=reconstruct" in result["reconstructed_note"]
    assert "note (reconstructed): no reconstructed row" in printed
    for row in ("raw", "pass_through", "patch_mean_only", "raw_patch_mean_only"):
        assert 0.0 <= result[f"top1_{row}"] <= 1.0


def test_a_head_without_a_cls_half_scores_pass_through_and_patch_mean_only_alike(tmp_path, capsys, dinov2_reg):
    weights, backbone = dinov2_reg
    _write_folder(tmp_path / "data")
    _export_fae(backbone, "none", tmp_path / "fae_none")
    _head(tmp_path, "patch_only.pth", cls_half=False)
    result, _ = _probe(tmp_path, capsys, weights, tmp_path / "fae_none", "patch_only.pth")
    assert result["top1_pass_through"] == result["top1_patch_mean_only"]
    assert result["top5_pass_through"] == result["top5_patch_mean_only"]
    assert result["top1_raw"] == result["top1_raw_patch_mean_only"]


def test_patch_mean_half_is_the_heads_patch_columns_plus_bias():
    gen = torch.Generator().manual_seed(7)
    head = LinearHead(torch.randn(4, 2 * DIM, generator=gen), torch.randn(4, generator=gen))
    features = torch.randn(6, 2 * DIM, generator=gen)
    before = features.clone()
    logits = head.logits(patch_mean_half(features, head))
    expected = features[:, DIM:].double() @ head.weight[:, DIM:].double().T + head.bias.double()
    torch.testing.assert_close(logits, expected)
    assert not torch.allclose(logits, head.logits(features))  # the CLS half did count before
    assert torch.equal(features, before)  # the input is not changed in place
    with pytest.raises(DataError, match="patch_mean_half"):
        patch_mean_half(features[:, :DIM], head)
