"""Latent cache -> generator training -> export -> `fae sample`, on real Fashion-MNIST latents of a
tiny FAE (tiny-vit backbone, 4x4x4 latents, a 1-block pixel decoder)."""
from __future__ import annotations

import json
import os
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import load, load_file, save_file

from fae.autoencoder import FAE, FAEConfig
from fae.autoencoder.pixel_decoder import PixelDecoder, PixelDecoderConfig
from fae.cli import main as fae_main
from fae.config import SHIPPED_CONFIGS, from_dict, load_config
from fae.data.datasets import DataConfig, build_dataset
from fae.data.latent_cache import CacheConfig, LatentCache, LatentDataset
from fae.data.shard_store import shard_path
from fae.errors import ConfigError, LatentCacheError
from fae.evaluation.stats import read_sample_batch
from fae.generation import Generator, GeneratorConfig
from fae.generation.decode import SampleDecoder
from fae.generation.samplers import SamplerConfig
from fae.images import quantize
from fae.stats import ChannelStats
from fae.training.engine import train
from fae.training.latents import cache_latents
from fae.training.stages.generator import GeneratorRunConfig, build_stage

TINY_FAE = {"backbone": "tiny-vit", "latent_channels": 4,
            "encoder": {"heads": 2, "head_dim": 16, "depth": 1},
            "decoder": {"depth": 1, "width": 32, "heads": 2}}
ITEMS = 96
STATS_ITEMS = 48  # the export's latent statistics cover fewer items than the cache (as in stage Ia)
LEGACY_FAE = Path(__file__).parent / "fixtures" / "exports_e37566a" / "fae"  # no "latent_shape" key


def export_fae(folder, seed: int):
    """A tiny FAE whose export carries latent statistics measured like stage Ia's (posterior means
    of the first STATS_ITEMS training images, no flips)."""
    torch.manual_seed(seed)
    fae = FAE(from_dict(FAEConfig, TINY_FAE))
    fae.set_pixel_decoder(PixelDecoder(PixelDecoderConfig(depth=1, dim=32, heads=2, out_channels=1,
                                                          image_size=28), token_dim=64, grid=(4, 4)))
    images = build_dataset(DataConfig(limit=STATS_ITEMS)).images  # [n, 1, 28, 28] uint8
    stats = ChannelStats(4)
    with torch.no_grad():
        stats.update(fae.encode(images).permute(0, 2, 3, 1))  # [n, h, w, c]
    fae.set_latent_stats(*stats.mean_std())
    fae.save_pretrained(folder)
    return folder


def cache_config(workdir, out, fae: str = "fae", **kw) -> CacheConfig:
    return CacheConfig(fae=str(workdir / fae), out=str(out), data=DataConfig(limit=ITEMS), flip=True,
                       shard_size=40, batch_size=32, progress=False, **kw)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    root = tmp_path_factory.mktemp("gen")
    export_fae(root / "fae", seed=0)
    export_fae(root / "other_fae", seed=1)
    cache_latents(cache_config(root, root / "cache"))
    return root


def test_cache_holds_the_faes_latents_with_flips(workdir):
    cache = LatentCache(workdir / "cache", fae=workdir / "fae")
    assert len(cache) == ITEMS and cache.latent_shape == (4, 4, 4) and cache.has_flips
    assert cache.manifest["num_shards"] == 3 and cache.manifest["fae"]["backbone"] == "tiny-vit"
    fae = FAE.from_pretrained(workdir / "fae")
    images = build_dataset(DataConfig(limit=ITEMS)).images[[0, 50, 95]]
    with torch.no_grad():
        expected, flipped = fae.encode(images), fae.encode(images.flip(-1))
    for k, i in enumerate((0, 50, 95)):
        assert torch.allclose(cache.item(i)[0], expected[k], atol=1e-5)
        assert torch.allclose(cache.item(i, flipped=True)[0], flipped[k], atol=1e-5)
    assert cache.labels().tolist() == build_dataset(DataConfig(limit=ITEMS)).labels.tolist()


def test_the_caches_statistics_are_the_fae_exports(workdir):
    cache, fae = LatentCache(workdir / "cache"), FAE.from_pretrained(workdir / "fae")
    mean, std = cache.stats()
    assert torch.equal(mean, fae.latent_mean) and torch.equal(std, fae.latent_std)  # copied, bit for bit
    assert cache.stats_source == "the FAE export"
    assert not (workdir / "cache" / "stats.safetensors").exists()
    # ...and not re-measured: the statistics of everything cached (all items, with flips) differ.
    every = ChannelStats(4)
    every.update(torch.stack([cache.item(i, f)[0] for i in range(ITEMS) for f in (False, True)]).permute(0, 2, 3, 1))
    assert (every.mean_std()[0] - mean).abs().max() > 1e-4
    z, _ = LatentDataset(cache, mean, std, flip=False)[7]
    assert torch.allclose(z, (cache.item(7)[0] - mean.view(-1, 1, 1)) / std.view(-1, 1, 1))


def write_version1_cache(workdir, folder, tensors: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Turn a copy of the cache into what the previous code wrote: manifest version 1 with its own
    measured "stats" (and stats.safetensors when ``tensors``), no "latent_stats"."""
    shutil.copytree(workdir / "cache", folder)
    manifest = json.loads((folder / "manifest.json").read_text())
    del manifest["latent_stats"]
    mean, std = torch.tensor([0.5, -0.25, 1.0, 2.0]), torch.tensor([1.5, 0.5, 0.75, 3.0])
    manifest.update(version=1, stats={"mean": (mean + 1).tolist(), "std": (std + 1).tolist()})
    (folder / "manifest.json").write_text(json.dumps(manifest))
    if tensors:
        save_file({"mean": mean, "std": std}, str(folder / "stats.safetensors"))
        return mean, std
    return mean + 1, std + 1


@pytest.mark.parametrize("tensors", [True, False])
def test_a_cache_written_by_the_previous_code_still_loads_with_its_own_statistics(workdir, tmp_path, tensors):
    mean, std = write_version1_cache(workdir, tmp_path / "old", tensors)
    cache = LatentCache(tmp_path / "old", fae=workdir / "fae")
    got_mean, got_std = cache.stats()
    assert torch.equal(got_mean, mean) and torch.equal(got_std, std)
    assert cache.stats_source == "the cache (version 1)"
    assert torch.allclose(cache.item(3)[0], LatentCache(workdir / "cache").item(3)[0])


def test_interrupted_cache_resumes_without_re_encoding_finished_shards(workdir, tmp_path):
    folder = tmp_path / "cache"
    shutil.copytree(workdir / "cache", folder)
    shard1 = shard_path(folder, 1).read_bytes()
    shard_path(folder, 1).unlink()  # as if the run died while encoding shard 1
    manifest = json.loads((folder / "manifest.json").read_text())
    (folder / "manifest.json").write_text(json.dumps({**manifest, "complete": False}))
    with pytest.raises(LatentCacheError, match="incomplete"):
        LatentCache(folder)
    before = {i: os.stat(shard_path(folder, i)).st_mtime_ns for i in (0, 2)}
    cache_latents(cache_config(workdir, folder))
    assert {i: os.stat(shard_path(folder, i)).st_mtime_ns for i in (0, 2)} == before
    again, first = load(shard_path(folder, 1).read_bytes()), load(shard1)
    assert torch.allclose(again["latents"], first["latents"], atol=1e-5)
    assert LatentCache(folder).manifest["complete"]


def test_resuming_with_another_shard_plan_is_refused_naming_the_key(workdir):
    with pytest.raises(LatentCacheError, match=r"cache' was started with shard_size=40, now 16; use a new folder"):
        cache_latents(replace(cache_config(workdir, workdir / "cache"), shard_size=16))


def test_a_cache_from_another_fae_is_refused(workdir):
    with pytest.raises(LatentCacheError, match="different FAE"):
        LatentCache(workdir / "cache", fae=workdir / "other_fae")
    with pytest.raises(LatentCacheError, match="different FAE"):
        cache_latents(cache_config(workdir, workdir / "cache", fae="other_fae"))
    code = fae_main(["train", "generator", f"data.cache={workdir / 'cache'}",
                     f"data.fae={workdir / 'other_fae'}", f"train.run_dir={workdir / 'refused'}", "model.size=S"])
    assert code == 2  # a one-line FAE error, no traceback


def generator_stage(*overrides: str):
    return build_stage(load_config(GeneratorRunConfig, None, ["model.depth=1", "model.dim=32", "model.heads=2",
                                                               *overrides]))


def test_the_stage_reads_the_latent_shape_from_upstream_and_refuses_a_disagreeing_value(workdir, tmp_path):
    nowhere = f"data.cache={tmp_path / 'no_cache'}"
    assert generator_stage(f"data.fae={workdir / 'fae'}", nowhere).config.model.latent_shape == (4, 4, 4)
    assert generator_stage(f"data.fae={LEGACY_FAE}", nowhere).config.model.latent_shape == (4, 4, 4)
    assert generator_stage(f"data.cache={workdir / 'cache'}").config.model.latent_shape == (4, 4, 4)
    agreeing = generator_stage(f"data.fae={workdir / 'fae'}", nowhere, "model.latent_channels=4")
    assert agreeing.config.model.latent_shape == (4, 4, 4)
    with pytest.raises(ConfigError, match="'model.latent_size' is 8"):
        generator_stage(f"data.fae={workdir / 'fae'}", nowhere, "model.latent_size=8")
    with pytest.raises(ConfigError, match="'model.latent_channels' is 32.*latent cache"):
        generator_stage(f"data.cache={workdir / 'cache'}", "model.latent_channels=32")
    with pytest.raises(ConfigError, match="'model.latent_channels' and 'model.latent_size'.*fae train autoencoder"):
        generator_stage(nowhere)
    explicit = generator_stage(nowhere, "model.latent_channels=8", "model.latent_size=2")  # no upstream yet
    assert explicit.config.model.latent_shape == (8, 2, 2)


def test_dry_run_needs_no_latent_shape_in_the_config_when_data_fae_is_an_export(workdir, tmp_path, capsys):
    config = SHIPPED_CONFIGS / "demo" / "generator.yaml"
    assert not {"latent_channels", "latent_size"} & set(yaml.safe_load(config.read_text())["model"])
    # the stage is described; the preflight then names the absent cache, and a dry run with a
    # missing input exits 2
    assert fae_main(["train", "generator", "--config", str(config), "--dry-run", f"data.fae={workdir / 'fae'}",
                     f"data.cache={tmp_path / 'none'}", f"train.run_dir={tmp_path / 'run'}"]) == 2
    out = capsys.readouterr().out
    assert "on 4x4x4 latents" in out and "latent shape from the FAE export" in out
    assert "OK       FAE export (data.fae)" in out and "MISSING  latent cache (data.cache)" in out
    assert fae_main(["train", "generator", "--config", str(config), "--dry-run", f"data.fae={tmp_path / 'x'}",
                     f"data.cache={tmp_path / 'none'}", f"train.run_dir={tmp_path / 'run'}"]) == 2
    assert "model.latent_channels" in capsys.readouterr().err


def test_sample_decoder_with_a_real_fae_equals_sample_decode_quantize(workdir):
    fae = FAE.from_pretrained(workdir / "fae")
    torch.manual_seed(0)
    gen = Generator(GeneratorConfig(depth=1, dim=32, heads=2, latent_channels=4, latent_size=4, num_classes=10),
                    latent_mean=fae.latent_mean, latent_std=fae.latent_std).eval()
    for p in gen.model.parameters():
        p.data.normal_(std=0.05)
    labels = torch.tensor([1, 7, 7, 0, 3])
    sampling = SamplerConfig(method="heun", steps=3)
    with torch.no_grad():
        expected = quantize(fae.decode(gen.sample(range(5), labels, seed=2, config=sampling)))  # [5, 1, 28, 28]
    for batch_size in (2, 5):
        out = SampleDecoder(gen, fae, sampling, batch_size=batch_size).all(range(5), labels, seed=2)
        assert out.images.shape == (5, 1, 28, 28) and torch.equal(out.images, expected)


def train_overrides(workdir, run: str, steps: int) -> list[str]:
    return [f"data.cache={workdir / 'cache'}", f"data.fae={workdir / 'fae'}", f"train.run_dir={workdir / run}",
            "model.depth=2", "model.dim=64", "model.heads=4", "model.style=lightningdit", "model.num_classes=10",
            "transport.shift=0.4", f"train.steps={steps}", "train.batch_size=32", "train.optim.lr=2e-3",
            "train.ema_decay=0.9", "train.log_every=10", "train.ckpt_every=0", "train.eval_every=0",
            "train.progress=false", "eval.grid_samples=4", "eval.loss_items=96",
            "sampling.method=euler", "sampling.steps=8"]


@pytest.fixture(scope="module")
def trained(workdir):
    """An untrained run (step 0) and a 120-step run of a tiny LightningDiT on the cache."""
    untrained = train(build_stage(load_config(GeneratorRunConfig, None, train_overrides(workdir, "r0", 0))))
    result = train(build_stage(load_config(GeneratorRunConfig, None, train_overrides(workdir, "run", 120))))
    return untrained, result


@pytest.mark.slow
def test_training_on_real_latents_lowers_the_loss_and_exports_the_cache_stats(workdir, trained):
    untrained, result = trained
    assert result["eval"]["fixed_noise_loss"] < 0.75 * untrained["eval"]["fixed_noise_loss"]
    assert (workdir / "run" / "samples" / "step_0000120.png").is_file()
    gen, fae = Generator.from_pretrained(result["export"]), FAE.from_pretrained(workdir / "fae")
    assert torch.equal(gen.latent_mean, fae.latent_mean) and torch.equal(gen.latent_std, fae.latent_std)
    assert gen.fae_identity["identity"] == fae.identity()
    model = json.loads((Path(result["export"]) / "config.json").read_text())["model"]
    assert (model["latent_channels"], model["latent_size"]) == (4, 4)  # resolved numbers, not null


def sample_args(workdir, export, out) -> list[str]:
    return ["sample", "--generator", export, "--fae", str(workdir / "fae"), "--num", "20",
            "--classes", "0,3", "--batch-size", "8", "--out", str(out), "sampling.steps=4"]


@pytest.mark.slow
def test_sample_writes_an_adm_npz_with_equal_classes_and_a_grid(workdir, trained, capsys):
    export = trained[1]["export"]
    out = workdir / "samples.npz"
    assert fae_main(sample_args(workdir, export, out)) == 0
    assert str(out.resolve()) in capsys.readouterr().out
    images, labels = read_sample_batch(out)
    assert images.shape == (20, 28, 28, 3) and images.dtype == np.uint8
    assert np.bincount(labels, minlength=10).tolist() == [10, 0, 0, 10, 0, 0, 0, 0, 0, 0]
    assert out.with_suffix(".png").is_file()
    # The generator refuses to decode with an FAE it was not trained for.
    assert fae_main(["sample", "--generator", export, "--fae", str(workdir / "other_fae"),
                     "--num", "2", "--out", str(workdir / "x.npz")]) == 2


@pytest.mark.slow
def test_two_ranks_under_torchrun_write_the_same_samples_as_one(workdir, trained):
    from launch import torchrun

    single = workdir / "samples_one.npz"
    assert fae_main(sample_args(workdir, trained[1]["export"], single)) == 0
    double = workdir / "samples_two.npz"
    # key=value form: torchrun's own parser would take `--num` for its `--numa-binding`.
    args = ["sample", f"generator={trained[1]['export']}", f"fae={workdir / 'fae'}", "num=20", "classes=[0,3]",
            "batch_size=8", f"out={double}", "sampling.steps=4"]
    proc = torchrun("-m", "fae", *args, timeout=600)
    assert proc.stdout.count("samples:") == 1  # only rank 0 reports
    (one, one_labels), (two, two_labels) = read_sample_batch(single), read_sample_batch(double)
    assert np.array_equal(one_labels, two_labels)
    diff = np.abs(one.astype(int) - two.astype(int))
    assert diff.max() <= 1 and diff.mean() < 0.01  # float round-off may flip a rounding


def test_dry_run_prints_the_papers_sit_xl1_size(capsys, tmp_path):
    # no latent cache there: the stage is described, the checklist names the cache, exit 2
    assert fae_main(["train", "generator", "--config", "imagenet256/sit_xl1.yaml", "--dry-run",
                     f"data.cache={tmp_path / 'latents'}"]) == 2
    out = capsys.readouterr().out
    assert "MISSING  latent cache (data.cache)" in out
    assert "SiT-XL/1" in out and "674.85M" in out


@pytest.mark.slow
def test_two_ranks_under_torchrun_share_the_cache_shards(workdir, tmp_path):
    from launch import torchrun

    out = tmp_path / "cache2"
    proc = torchrun("-m", "fae", "cache-latents", f"fae={workdir / 'fae'}", f"out={out}", f"data.limit={ITEMS}",
                    "flip=true", "shard_size=40", "batch_size=32", "progress=false", timeout=600)
    assert proc.stdout.count("latent cache:") == 1
    two, one = LatentCache(out), LatentCache(workdir / "cache")
    for i in range(3):
        a, b = load_file(str(shard_path(out, i))), load_file(str(shard_path(workdir / "cache", i)))
        assert torch.equal(a["labels"], b["labels"])
        assert torch.allclose(a["latents"], b["latents"], atol=1e-5)
    assert torch.equal(two.stats()[0], one.stats()[0])  # both the FAE export's
