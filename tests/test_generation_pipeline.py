"""Latent cache -> generator training -> export -> `fae sample`, on real Fashion-MNIST latents of a
tiny FAE (tiny-vit backbone, 4x4x4 latents, a 1-block pixel decoder)."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch

from fae.autoencoder import FAE, FAEConfig
from fae.autoencoder.pixel_decoder import PixelDecoder, PixelDecoderConfig
from fae.cli import main as fae_main
from fae.config import from_dict, load_config
from fae.data.datasets import DataConfig, build_dataset
from fae.data.latent_cache import CacheConfig, LatentCache, cache_latents, shard_path
from fae.errors import LatentCacheError
from fae.generation import Generator

TINY_FAE = {"backbone": "tiny-vit", "latent_channels": 4,
            "encoder": {"heads": 2, "head_dim": 16, "depth": 1},
            "decoder": {"depth": 1, "width": 32, "heads": 2}}
ITEMS = 96


def export_fae(folder, seed: int):
    torch.manual_seed(seed)
    fae = FAE(from_dict(FAEConfig, TINY_FAE))
    fae.set_pixel_decoder(PixelDecoder(PixelDecoderConfig(depth=1, dim=32, heads=2, out_channels=1,
                                                          image_size=28), token_dim=64, grid=(4, 4)))
    fae.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    root = tmp_path_factory.mktemp("gen")
    export_fae(root / "fae", seed=0)
    export_fae(root / "other_fae", seed=1)
    cfg = CacheConfig(fae=str(root / "fae"), out=str(root / "cache"), data=DataConfig(limit=ITEMS),
                      flip=True, shard_size=40, batch_size=32, progress=False)
    cache_latents(cfg)
    return root


def test_cache_holds_the_faes_latents_with_flips_and_stats(workdir):
    cache = LatentCache(workdir / "cache", fae=workdir / "fae")
    assert len(cache) == ITEMS and cache.latent_shape == (4, 4, 4) and cache.has_flips
    assert cache.manifest["num_shards"] == 3 and cache.manifest["fae"]["backbone"] == "tiny-vit"
    fae = FAE.from_pretrained(workdir / "fae")
    images = torch.stack([build_dataset(DataConfig(limit=ITEMS))[i][0] for i in (0, 50, 95)])
    with torch.no_grad():
        expected, flipped = fae.encode(images), fae.encode(images.flip(-1))
    for k, i in enumerate((0, 50, 95)):
        assert torch.allclose(cache.item(i)[0], expected[k], atol=1e-5)
        assert torch.allclose(cache.item(i, flipped=True)[0], flipped[k], atol=1e-5)
    assert cache.labels().tolist() == build_dataset(DataConfig(limit=ITEMS)).labels.tolist()
    mean, std = cache.stats()
    every = torch.stack([cache.item(i, f)[0] for i in range(ITEMS) for f in (False, True)])
    assert torch.allclose(mean, every.mean(dim=(0, 2, 3)), atol=1e-4)
    assert torch.allclose(std, every.std(dim=(0, 2, 3), unbiased=False), atol=1e-4)


def test_interrupted_cache_resumes_without_re_encoding_finished_shards(workdir, tmp_path):
    import shutil

    folder = tmp_path / "cache"
    shutil.copytree(workdir / "cache", folder)
    shard1 = shard_path(folder, 1).read_bytes()
    shard_path(folder, 1).unlink()  # as if the run died while encoding shard 1
    manifest = json.loads((folder / "manifest.json").read_text())
    (folder / "manifest.json").write_text(json.dumps({**manifest, "complete": False}))
    with pytest.raises(LatentCacheError, match="incomplete"):
        LatentCache(folder)
    before = {i: os.stat(shard_path(folder, i)).st_mtime_ns for i in (0, 2)}
    cache_latents(CacheConfig(fae=str(workdir / "fae"), out=str(folder), data=DataConfig(limit=ITEMS),
                              flip=True, shard_size=40, batch_size=32, progress=False))
    assert {i: os.stat(shard_path(folder, i)).st_mtime_ns for i in (0, 2)} == before
    from safetensors.torch import load

    again, first = load(shard_path(folder, 1).read_bytes()), load(shard1)
    assert torch.allclose(again["latents"], first["latents"], atol=1e-5)
    assert LatentCache(folder).manifest["complete"]


def test_a_cache_from_another_fae_is_refused(workdir):
    with pytest.raises(LatentCacheError, match="different FAE"):
        LatentCache(workdir / "cache", fae=workdir / "other_fae")
    with pytest.raises(LatentCacheError, match="different FAE"):
        cache_latents(CacheConfig(fae=str(workdir / "other_fae"), out=str(workdir / "cache"),
                                  data=DataConfig(limit=ITEMS), flip=True, shard_size=40, progress=False))
    code = fae_main(["train", "generator", f"data.cache={workdir / 'cache'}",
                     f"data.fae={workdir / 'other_fae'}", f"train.run_dir={workdir / 'refused'}",
                     "model.size=S", "model.latent_channels=4", "model.latent_size=4"])
    assert code == 2  # a one-line FAE error, no traceback


def train_overrides(workdir, run: str, steps: int) -> list[str]:
    return [f"data.cache={workdir / 'cache'}", f"data.fae={workdir / 'fae'}", f"train.run_dir={workdir / run}",
            "model.depth=2", "model.dim=64", "model.heads=4", "model.style=lightningdit",
            "model.latent_channels=4", "model.latent_size=4", "model.num_classes=10",
            "transport.shift=0.4", f"train.steps={steps}", "train.batch_size=32", "train.optim.lr=2e-3",
            "train.ema_decay=0.9", "train.log_every=10", "train.ckpt_every=0", "train.eval_every=0",
            "train.progress=false", "eval.grid_samples=4", "eval.loss_items=96",
            "sampling.method=euler", "sampling.steps=8"]


@pytest.fixture(scope="module")
def trained(workdir):
    """An untrained run (step 0) and a 120-step run of a tiny LightningDiT on the cache."""
    from fae.training.engine import train
    from fae.training.stages.generator import GeneratorRunConfig, build_stage

    untrained = train(build_stage(load_config(GeneratorRunConfig, None, train_overrides(workdir, "r0", 0))))
    result = train(build_stage(load_config(GeneratorRunConfig, None, train_overrides(workdir, "run", 120))))
    return untrained, result


@pytest.mark.slow
def test_training_on_real_latents_lowers_the_loss_and_exports_the_cache_stats(workdir, trained):
    untrained, result = trained
    assert result["eval"]["fixed_noise_loss"] < 0.75 * untrained["eval"]["fixed_noise_loss"]
    assert (workdir / "run" / "samples" / "step_0000120.png").is_file()
    gen = Generator.from_pretrained(result["export"])
    assert torch.allclose(gen.latent_mean, LatentCache(workdir / "cache").stats()[0])
    assert gen.fae_identity["identity"] == FAE.from_pretrained(workdir / "fae").identity()


def sample_args(workdir, export, out) -> list[str]:
    return ["sample", "--generator", export, "--fae", str(workdir / "fae"), "--num", "20",
            "--classes", "0,3", "--batch-size", "8", "--out", str(out), "sampling.steps=4"]


@pytest.mark.slow
def test_sample_writes_an_adm_npz_with_equal_classes_and_a_grid(workdir, trained, capsys):
    export = trained[1]["export"]
    out = workdir / "samples.npz"
    assert fae_main(sample_args(workdir, export, out)) == 0
    assert str(out.resolve()) in capsys.readouterr().out
    with np.load(out) as npz:
        images, labels = npz["arr_0"], npz["labels"]
    assert images.shape == (20, 28, 28, 3) and images.dtype == np.uint8
    assert np.bincount(labels, minlength=10).tolist() == [10, 0, 0, 10, 0, 0, 0, 0, 0, 0]
    assert out.with_suffix(".png").is_file()
    # The generator refuses to decode with an FAE it was not trained for.
    assert fae_main(["sample", "--generator", export, "--fae", str(workdir / "other_fae"),
                     "--num", "2", "--out", str(workdir / "x.npz")]) == 2


@pytest.mark.slow
def test_two_ranks_under_torchrun_write_the_same_samples_as_one(workdir, trained):
    import subprocess
    import sys
    from pathlib import Path

    single = workdir / "samples_one.npz"
    assert fae_main(sample_args(workdir, trained[1]["export"], single)) == 0
    double = workdir / "samples_two.npz"
    torchrun = Path(sys.executable).with_name("torchrun")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    # key=value form: torchrun's own parser would take `--num` for its `--numa-binding`.
    args = ["sample", f"generator={trained[1]['export']}", f"fae={workdir / 'fae'}", "num=20", "classes=[0,3]",
            "batch_size=8", f"out={double}", "sampling.steps=4"]
    proc = subprocess.run([str(torchrun), "--standalone", "--nproc_per_node=2", "-m", "fae", *args],
                          capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.count("samples:") == 1  # only rank 0 reports
    with np.load(single) as one, np.load(double) as two:
        assert np.array_equal(one["labels"], two["labels"])
        diff = np.abs(one["arr_0"].astype(int) - two["arr_0"].astype(int))
        assert diff.max() <= 1 and diff.mean() < 0.01  # float round-off may flip a rounding


def test_dry_run_prints_the_papers_sit_xl1_size(capsys):
    assert fae_main(["train", "generator", "--config", "configs/imagenet256/sit_xl1.yaml", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "SiT-XL/1" in out and "674.85M" in out


@pytest.mark.slow
def test_two_ranks_under_torchrun_share_the_cache_shards(workdir, tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    from safetensors.torch import load_file

    torchrun = Path(sys.executable).with_name("torchrun")
    out = tmp_path / "cache2"
    proc = subprocess.run([str(torchrun), "--standalone", "--nproc_per_node=2", "-m", "fae", "cache-latents",
                           f"fae={workdir / 'fae'}", f"out={out}", f"data.limit={ITEMS}", "flip=true",
                           "shard_size=40", "batch_size=32", "progress=false"],
                          capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"},
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.count("latent cache:") == 1
    two, one = LatentCache(out), LatentCache(workdir / "cache")
    for i in range(3):
        a, b = load_file(str(shard_path(out, i))), load_file(str(shard_path(workdir / "cache", i)))
        assert torch.equal(a["labels"], b["labels"])
        assert torch.allclose(a["latents"], b["latents"], atol=1e-5)
    assert torch.allclose(two.stats()[0], one.stats()[0], atol=1e-5)
