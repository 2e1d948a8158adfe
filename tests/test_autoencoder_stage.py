"""`fae train autoencoder`: dry run at the paper's sizes, real-feature overfit, tiny end-to-end run."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch

from fae.autoencoder import FAE, FAEConfig
from fae.autoencoder.model import fae_loss
from fae.config import SHIPPED_CONFIGS, from_dict, load_config
from fae.errors import ConfigError
from fae.training.stages.autoencoder import AutoencoderRunConfig, build_stage

PAPER_CONFIG = SHIPPED_CONFIGS / "imagenet256" / "fae_dinov2g.yaml"
DEMO_CONFIG = SHIPPED_CONFIGS / "demo" / "autoencoder.yaml"


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def test_dry_run_of_the_paper_config_has_the_paper_sizes(capsys, tmp_path):
    from fae.cli import main

    # the images are absent (a folder that does not exist): the stage is described, then the
    # preflight's checklist names them and the dry run exits 2
    assert main(["train", "autoencoder", "--config", str(PAPER_CONFIG), "--dry-run",
                 f"data.root={tmp_path / 'imagenet'}"]) == 2
    out = capsys.readouterr().out
    assert f"MISSING  data (train): config key 'data.root': '{tmp_path / 'imagenet'}' does not exist" in out
    encoder, decoder = map(float, re.search(r"encoder ([\d.]+)M .* feature decoder ([\d.]+)M", out).groups())
    assert "encoder 38.17M = 38,166,592 (attention: projected skip, activation at attention width, " \
           "no position table)" in out  # App. D's 38.17M exactly
    assert decoder == pytest.approx(170.43, rel=0.02)
    assert "dinov2-g14 at 224 px -> tokens 16x16x1536" in out
    assert "global batch 1024" in out and "cosine, 1000 warm-up" in out


def test_siglip2_config_is_the_dinov2_fae_on_the_papers_second_backbone():
    paper = load_config(AutoencoderRunConfig, PAPER_CONFIG)
    siglip = load_config(AutoencoderRunConfig, PAPER_CONFIG.with_name("fae_siglip2g.yaml"))
    assert (siglip.backbone.name, siglip.backbone.resolution) == ("siglip2-g-opt16-256", 256)
    assert siglip.model == paper.model and siglip.loss == paper.loss and siglip.train.optim == paper.train.optim
    fae = build_stage(siglip).build_models("meta")["fae"]
    assert fae.latent_shape == (32, 16, 16) and fae.config.token_dim == 1536
    assert sum(p.numel() for p in fae.encoder.parameters()) == 38_166_592


def test_demo_config_validates_and_is_small():
    stage = build_stage(load_config(AutoencoderRunConfig, DEMO_CONFIG))
    fae = stage.build_models("meta")["fae"]
    assert fae.latent_shape == (8, 8, 8) and fae.config.token_dim == 112  # efficientnet-lite0-s16 at 128 px
    assert sum(p.numel() for p in fae.parameters()) < 5e6


def test_cache_tokens_refuses_flip():
    with pytest.raises(ConfigError, match="data.flip"):
        load_config(AutoencoderRunConfig, None, ["cache_tokens=true", "data.flip=true"])


def test_the_backbone_is_named_in_the_backbone_section_only():
    with pytest.raises(ConfigError, match=r"'model.backbone'.*use 'backbone.name'"):
        load_config(AutoencoderRunConfig, DEMO_CONFIG, ["model.backbone=tiny-vit"])
    with pytest.raises(ConfigError, match=r"'model.resolution'.*use 'backbone.resolution'"):
        load_config(AutoencoderRunConfig, DEMO_CONFIG, ["model.resolution=64"])
    # what the FAE records comes from backbone: (the export keeps its backbone / resolution fields)
    cfg = load_config(AutoencoderRunConfig, DEMO_CONFIG, ["backbone.name=tiny-vit", "backbone.resolution=64"])
    fae = build_stage(cfg).build_models("meta")["fae"]
    assert (fae.config.backbone, fae.config.resolution, tuple(fae.config.grid)) == ("tiny-vit", 64, (8, 8))


def test_overfits_a_small_batch_of_real_features():
    """EfficientNet-Lite0 (ImageNet weights) tokens of 8 Fashion-MNIST images: loss falls >= 10x."""
    from fae.backbones import load_backbone
    from fae.data.fashion_mnist import FashionMNIST

    backbone = load_backbone("efficientnet-lite0", resolution=128)
    tokens = backbone(FashionMNIST("train", limit=8).images)  # [8, 16, 1280]
    torch.manual_seed(0)
    cfg = from_dict(FAEConfig, {"backbone": "efficientnet-lite0", "resolution": 128, "latent_channels": 16,
                                "encoder": {"heads": 2, "head_dim": 32},
                                "decoder": {"depth": 1, "width": 128, "heads": 2}})
    fae = FAE(cfg).attach_backbone(backbone)
    fae.set_feature_stats(tokens.mean(dim=(0, 1)), tokens.std(dim=(0, 1)).clamp_min(1e-6))
    opt = torch.optim.AdamW(fae.parameters(), lr=3e-3)
    losses = []
    for _ in range(100):
        loss, _ = fae_loss(fae(tokens, sample=True), kl_weight=1e-4)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] * 10 <= losses[0], (losses[0], losses[-1])


def _tiny_run_overrides(tmp_path: Path, cache: bool) -> list[str]:
    return [f"train.run_dir={tmp_path / 'run'}", "train.steps=20", "train.batch_size=8",
            "train.log_every=10", "train.ckpt_every=0", "train.progress=false", "train.tensorboard=false",
            "train.optim.lr=3e-3", "backbone.name=tiny-vit", "backbone.resolution=null",
            "model.latent_channels=4",
            "model.encoder.heads=2", "model.encoder.head_dim=16",
            "model.decoder.depth=1", "model.decoder.width=32", "model.decoder.heads=2",
            "data.limit=64", "eval.limit=32", "eval.batch_size=16", "stats_images=64",
            f"cache_tokens={str(cache).lower()}", f"eval.probe={str(cache).lower()}",
            "eval.probe_epochs=10", f"token_cache_dir={tmp_path / 'cache'}"]


def test_train_end_to_end_with_cached_tokens(tmp_path, capsys):
    from fae.stats import ChannelStats
    from fae.training.engine import train

    stage = build_stage(load_config(AutoencoderRunConfig, DEMO_CONFIG, _tiny_run_overrides(tmp_path, True)))
    result = train(stage)
    shards = sorted((tmp_path / "cache").glob("*/shard-*.safetensors"))
    assert len(shards) == 2  # one key per split (train, test), one shard each
    ev = result["eval"]
    for key in ("cosine", "rel_l2", "rec_mse", "kl", "loss", "latent_std_mean", "probe_top1_raw",
                "probe_top1_recon", "probe_gap"):
        assert key in ev and ev[key] == ev[key]
    assert -1 <= ev["cosine"] <= 1 and ev["rel_l2"] > 0
    fae = FAE.from_pretrained(result["export"])
    assert (fae.config.backbone, fae.config.resolution) == ("tiny-vit", 32)
    # Stored feature statistics are the training tokens' (not the identity defaults) ...
    train_tokens = stage.tokens["train"].tokens.float()
    torch.testing.assert_close(fae.normalizer.mean, train_tokens.mean(dim=(0, 1)), rtol=1e-4, atol=1e-4)
    # ... and the latent statistics those of the training posterior means, in the export itself
    latent = ChannelStats(4)
    latent.update(fae.posterior(train_tokens).mean)
    mean, std = latent.mean_std()
    torch.testing.assert_close(fae.latent_mean, mean, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(fae.latent_std, std, rtol=1e-4, atol=1e-5)
    assert min(fae.latent_std.tolist()) > 0

    # A second run with the same data + backbone reuses the cache, and so does another data.limit
    # (Fashion-MNIST's limit keeps the first items: a prefix of the same cache).
    mtimes = [p.stat().st_mtime_ns for p in shards]
    again = _tiny_run_overrides(tmp_path, True) + [f"train.run_dir={tmp_path / 'run2'}", "train.steps=1"]
    train(build_stage(load_config(AutoencoderRunConfig, DEMO_CONFIG, again)))
    other = again + [f"train.run_dir={tmp_path / 'run3'}", "data.limit=32"]
    train(build_stage(load_config(AutoencoderRunConfig, DEMO_CONFIG, other)))
    assert [p.stat().st_mtime_ns for p in sorted((tmp_path / "cache").glob("*/shard-*.safetensors"))] == mtimes


def test_train_with_the_backbone_in_the_loop(tmp_path):
    """cache_tokens=false: images go through the frozen backbone inside each step."""
    from fae.training.engine import train

    overrides = _tiny_run_overrides(tmp_path, False) + ["data.flip=true"]
    stage = build_stage(load_config(AutoencoderRunConfig, DEMO_CONFIG, overrides))
    result = train(stage)
    assert not (tmp_path / "cache").exists()
    assert 0 < result["eval"]["rel_l2"] and result["eval"]["cosine"] > 0
    first = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[0])
    assert "main/rec" in first and "main/kl" in first
