"""``fae cache-latents`` in raw-token mode (``backbone.name=...``, no FAE): the cache holds the
backbone's tokens [N, D] as latents [D, h, w], exactly, with the per-channel statistics of
``stats_images`` evenly spaced items; the generator standardises with them and trains on it (the
paper's raw-feature row, ``imagenet256/sit_xl1_dinov2_tokens.yaml``)."""
from __future__ import annotations

import contextlib
import io
import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from fae.backbones.config import BackboneConfig
from fae.cli import main
from fae.config import SHIPPED_CONFIGS, load_config
from fae.data.datasets import DataConfig, build_dataset
from fae.data.imagefolder import evenly_spaced
from fae.data.latent_cache import LatentCache, LatentDataset
from fae.errors import ConfigError, LatentCacheError
from fae.training.engine import dry_run
from fae.training.latents import LatentsConfig, cache_tokens
from fae.training.stages.registry import load_stage
from tiny import tiny_backbone

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py

ITEMS, STATS_ITEMS = 12, 8  # Fashion-MNIST items cached; items whose tokens give the statistics


def token_config(out: Path, **kw) -> LatentsConfig:
    """Raw tiny-vit tokens (4x4 grid of 64-d) of the first Fashion-MNIST items, with flips."""
    settings = dict(backbone=BackboneConfig(name="tiny-vit"), out=str(out), data=DataConfig(limit=ITEMS),
                    flip=True, stats_images=STATS_ITEMS, batch_size=5, shard_size=7, progress=False)
    return LatentsConfig(**{**settings, **kw})


def backbone_latents(images: torch.Tensor) -> torch.Tensor:
    """The tiny backbone's tokens [B, 16, 64] of uint8 images, as latents [B, 64, 4, 4] (row-major grid)."""
    with torch.no_grad():
        tokens = tiny_backbone()(images)  # [B, 16, 64]
    return tokens.transpose(1, 2).reshape(len(images), 64, 4, 4)


@pytest.fixture(scope="module")
def token_cache(tmp_path_factory) -> Path:
    return cache_tokens(token_config(tmp_path_factory.mktemp("tokens") / "cache"))


def test_the_cache_holds_the_backbone_tokens_and_their_flips(token_cache):
    cache = LatentCache(token_cache)
    dataset = build_dataset(DataConfig(limit=ITEMS))
    assert cache.latent_shape == (64, 4, 4) and len(cache) == ITEMS and cache.has_flips
    picks = [0, 6, 7, 11]  # both sides of the shard boundary at 7
    images = dataset.images[picks]  # [4, 1, 28, 28] uint8
    expected, expected_flipped = backbone_latents(images), backbone_latents(images.flip(-1))
    for row, i in enumerate(picks):
        z, label = cache.item(i)
        assert torch.allclose(z, expected[row], atol=1e-5) and label == int(dataset.labels[i])
        assert torch.allclose(cache.item(i, flipped=True)[0], expected_flipped[row], atol=1e-5)
    assert not torch.allclose(expected, expected_flipped, atol=1e-3)  # the flip is a different image


def test_statistics_are_the_tokens_per_channel_over_evenly_spaced_items(token_cache):
    """The generator's normalisation: (z - mean) / std per channel, with mean / std the population
    statistics of the stats items' tokens (std floored at 0.1 x its mean over channels)."""
    cache = LatentCache(token_cache)
    picks = evenly_spaced(ITEMS, STATS_ITEMS)
    assert picks.tolist() == [0, 2, 3, 5, 6, 8, 9, 11]
    z = backbone_latents(build_dataset(DataConfig(limit=ITEMS)).images[picks]).double()  # [8, 64, 4, 4]
    mean, std = z.mean(dim=(0, 2, 3)), z.std(dim=(0, 2, 3), unbiased=False)
    std = std.clamp_min(0.1 * std.mean())
    got_mean, got_std = cache.stats()
    assert torch.allclose(got_mean.double(), mean, atol=1e-5) and torch.allclose(got_std.double(), std, atol=1e-5)
    normalised = LatentDataset(cache, got_mean, got_std, flip=False)
    standardised = torch.stack([normalised[int(i)][0] for i in picks]).double()  # [8, 64, 4, 4]
    assert torch.allclose(standardised, (z - mean.view(-1, 1, 1)) / std.view(-1, 1, 1), atol=1e-4)
    assert standardised.mean(dim=(0, 2, 3)).abs().max() < 1e-4  # zero mean over the stats items


def test_the_manifest_names_the_token_source(token_cache):
    manifest = json.loads((token_cache / "manifest.json").read_text())
    assert manifest["fae_path"] == "raw tiny-vit tokens at 32 px (statistics of 8 images)"
    assert manifest["fae"]["backbone"] == "tiny-vit (raw tokens)" and manifest["fae"]["resolution"] == 32


def test_a_resume_keeps_the_recorded_statistics_and_other_settings_are_refused(tmp_path):
    cfg = token_config(tmp_path / "cache")
    folder = cache_tokens(cfg)
    before = LatentCache(folder)
    identity, stats = before.identity["identity"], before.stats()
    (folder / "shard-00001.safetensors").unlink()  # an interrupted run
    manifest = json.loads((folder / "manifest.json").read_text())
    (folder / "manifest.json").write_text(json.dumps({**manifest, "complete": False}))
    cache_tokens(cfg)
    after = LatentCache(folder)
    assert after.identity["identity"] == identity and torch.equal(after.stats()[0], stats[0])
    assert torch.allclose(after.item(ITEMS - 1)[0], before.item(ITEMS - 1)[0], atol=1e-6)
    with pytest.raises(LatentCacheError, match="written by a different FAE"):
        cache_tokens(replace(cfg, stats_images=4))  # other statistics: another latent space


def test_tokens_from_a_token_cache_are_the_same_latents(token_cache, tmp_path):
    cfg = token_config(tmp_path / "cache", flip=False, token_cache_dir=str(tmp_path / "tokens"))
    from_tokens = LatentCache(cache_tokens(cfg))
    reference = LatentCache(token_cache)
    for i in (0, 11):  # the token cache stores float16: equal to that precision
        assert torch.allclose(from_tokens.item(i)[0], reference.item(i)[0], atol=2e-2, rtol=1e-2)
    assert torch.allclose(from_tokens.stats()[1], reference.stats()[1], rtol=1e-2)


@pytest.mark.parametrize("overrides, message", [
    (["backbone.name=tiny-vit", "fae=runs/fae/export"], "'fae' .* and 'backbone.name' .* are both set"),
    (["backbone.resolution=64"], "'backbone' is set without 'backbone.name'"),
    (["backbone.name=tiny-vit", "token_cache_dir=t", "flip=true"], "'flip' must be false with token_cache_dir"),
    (["backbone.name=tiny-vit", "stats_images=0"], "'stats_images' must be >= 1"),
    ([], "'fae' is required"),
])
def test_bad_mode_settings_name_the_key(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config(LatentsConfig, None, overrides)


def test_the_command_writes_raw_tokens_and_the_paper_generator_config_trains_on_them(tmp_path, monkeypatch):
    """`fae cache-latents backbone.name=...`, then the shipped raw-token generator config (shrunk,
    latent shape from the cache) passes its dry run and reads standardised tokens from the cache."""
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "cache"
    with contextlib.redirect_stdout(io.StringIO()) as printed:
        assert main(["cache-latents", "backbone.name=tiny-vit", f"out={out}", "data.limit=6", "stats_images=6",
                     "progress=false"]) == 0
    assert f"latent cache: {out.resolve()}" in printed.getvalue()
    shrink = ["model.latent_channels=null", "model.latent_size=null", "model.depth=1", "model.dim=32",
              "model.heads=2", "model.num_classes=10", f"data.cache={out}", f"train.run_dir={tmp_path / 'run'}"]
    stage = load_stage("generator", str(SHIPPED_CONFIGS / "imagenet256/sit_xl1_dinov2_tokens.yaml"), shrink)
    with contextlib.redirect_stdout(io.StringIO()):
        described = dry_run(stage)
    assert described["missing"] == [] and "latent cache data.cache=" in described["lines"][-1]
    assert stage.config.model.latent_channels == 64 and stage.config.model.latent_size == 4
    stage.setup(torch.device("cpu"))
    z, label = stage.train_dataset()[0]
    mean, std = LatentCache(out).stats()
    expected = backbone_latents(build_dataset(DataConfig(limit=6)).images[:1])[0]
    assert torch.allclose(z, (expected - mean.view(-1, 1, 1)) / std.view(-1, 1, 1), atol=1e-4)
