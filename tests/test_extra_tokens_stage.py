"""`fae train autoencoder model.extra_tokens=reconstruct`: the stage feeds the backbone's CLS /
register tokens (cached beside the patches, or from the backbone in the loop), trains their
reconstruction and exports an FAE that decodes them. Backbone: a tiny random DINOv2 with 4
registers saved to a temp folder and registered under a registry name for the test (no downloads).
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch

from fae.autoencoder import FAE
from fae.backbones import TokenCache, load_backbone
from fae.config import SHIPPED_CONFIGS, load_config
from fae.errors import DataError
from fae.training.engine import train
from fae.training.stages.autoencoder import AutoencoderRunConfig, build_stage

DEMO_CONFIG = SHIPPED_CONFIGS / "demo" / "autoencoder.yaml"
NAME = "dinov2-t14-reg"  # the registry name of the tiny model (ends in -reg: Dinov2WithRegistersModel)
TINY_HF = dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64)
STEPS = 48

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.fixture(scope="module")
def tiny_dinov2_folder(tmp_path_factory) -> Path:
    """A tiny DINOv2 with 4 registers: 42 px -> 3x3 patches of width 32, plus CLS + 4 registers."""
    import transformers as tf

    folder = tmp_path_factory.mktemp("hf") / NAME
    torch.manual_seed(0)
    config = tf.Dinov2WithRegistersConfig(image_size=42, patch_size=14, num_register_tokens=4, **TINY_HF)
    tf.Dinov2WithRegistersModel(config).eval().save_pretrained(folder)
    return folder


@pytest.fixture
def tiny_dinov2(tiny_dinov2_folder, monkeypatch) -> Path:
    """The tiny model as registry entry ``NAME`` (stage configs name registry backbones)."""
    from fae.backbones import registry

    entries = registry._registry()
    entry = registry._vit(NAME, "dinov2", 32, 14, 42, registry.IMAGENET_MEAN, registry.IMAGENET_STD,
                          str(tiny_dinov2_folder), "tiny random DINOv2 with registers", prefix_tokens=5)
    monkeypatch.setattr(registry, "_registry", lambda: {**entries, NAME: entry})
    return tiny_dinov2_folder


def _config(tmp_path: Path, weights: Path, cache: bool, *more: str) -> AutoencoderRunConfig:
    overrides = [f"train.run_dir={tmp_path / 'run'}", f"train.steps={STEPS}", "train.batch_size=8",
                 "train.log_every=1", "train.ckpt_every=0", "train.progress=false", "train.tensorboard=false",
                 "train.ema_decay=null", "train.optim.lr=3e-3", "train.optim.warmup_steps=4",
                 f"backbone.name={NAME}", "backbone.resolution=null", f"backbone.weights={weights}",
                 "model.extra_tokens=reconstruct", "model.latent_channels=4",
                 "model.encoder.heads=2", "model.encoder.head_dim=16",
                 "model.decoder.depth=1", "model.decoder.width=32", "model.decoder.heads=2",
                 "data.limit=64", "eval.limit=16", "eval.batch_size=16", "eval.probe=false",
                 "stats_images=64", f"cache_tokens={str(cache).lower()}", f"token_cache_dir={tmp_path / 'cache'}",
                 *more]
    return load_config(AutoencoderRunConfig, DEMO_CONFIG, overrides)


def _extra_losses(run_dir: Path) -> list[float]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [row["main/rec_extra"] for row in map(json.loads, lines) if "main/rec_extra" in row]


def _cls_distance(fae: FAE, backbone, images: torch.Tensor) -> float:
    """Mean L2 distance of the FAE's reconstructed CLS token to the backbone's own."""
    out = fae.outputs_from(images)
    with torch.no_grad():
        return float((fae.reconstruct(out).cls - out.cls).norm(dim=1).mean())


@pytest.mark.parametrize("cache", [True, False], ids=["cached", "backbone-in-the-loop"])
def test_reconstruct_mode_trains_the_cls_and_register_tokens(tmp_path, tiny_dinov2, cache):
    from fae.data.fashion_mnist import FashionMNIST

    cfg = _config(tmp_path, tiny_dinov2, cache)
    stage = build_stage(cfg)
    result = train(stage)
    losses = _extra_losses(tmp_path / "run")
    assert len(losses) == STEPS
    quarter = STEPS // 4
    first, last = sum(losses[:quarter]) / quarter, sum(losses[-quarter:]) / quarter
    assert last < 0.7 * first, (first, last)  # the CLS / register L2 is trained
    ev = result["eval"]
    assert -1 <= ev["extra_cosine"] <= 1 and ev["rec_extra"] > 0
    assert ev["loss"] == pytest.approx(ev["rec_mse"] + cfg.loss.kl_weight * ev["kl"] + ev["rec_extra"])
    assert (tmp_path / "cache").exists() == cache

    backbone = load_backbone(NAME, weights=str(tiny_dinov2))
    fae = FAE.from_pretrained(result["export"], backbone=backbone).eval()
    # the extra tokens' statistics are the training CLS / registers' (not the identity defaults)
    images = FashionMNIST("train", limit=64).images
    extra = backbone.forward_all(images).extra()  # [64, 5, 32]
    tol = dict(rtol=1e-3, atol=1e-3) if cache else dict(rtol=1e-4, atol=1e-5)  # cached: float16
    torch.testing.assert_close(fae.extra_normalizer.mean, extra.mean(dim=(0, 1)), **tol)
    # the reconstructed CLS is closer to the true one than an untrained FAE's with the same statistics
    untrained = FAE(fae.config).attach_backbone(backbone).eval()
    untrained.load_state_dict({k: v for k, v in fae.state_dict().items() if "normalizer" in k}, strict=False)
    held_out = FashionMNIST("test", limit=16).images
    assert _cls_distance(fae, backbone, held_out) < 0.95 * _cls_distance(untrained, backbone, held_out)


def test_a_patch_only_cache_is_refused_and_an_extra_token_cache_serves_both(tmp_path, tiny_dinov2):
    cfg = _config(tmp_path, tiny_dinov2, True, "train.steps=1")
    backbone = load_backbone(NAME, weights=str(tiny_dinov2))
    patches_only = TokenCache(cfg.token_cache_folder(), backbone, cfg.backbone.weights,
                              batch_size=cfg.eval.batch_size)
    tokens, _ = patches_only.tokens(cfg.data, progress=False)  # a stage without extra tokens filled it
    folder = patches_only.folder_for(cfg.data)
    with pytest.raises(DataError, match=rf"'{re.escape(str(folder))}' holds patch tokens only.*CLS / register"
                                        r".*delete the folder"):
        train(build_stage(cfg))

    # rebuilt with extra tokens, the folder serves patch-only requests too (stage Ib shares it)
    for path in folder.iterdir():
        path.unlink()
    train(build_stage(cfg))
    with_extra = TokenCache(cfg.token_cache_folder(), backbone, cfg.backbone.weights, with_extra=True)
    assert with_extra.folder_for(cfg.data) == folder
    cached = with_extra.dataset(cfg.data, progress=False)
    truth = backbone.forward_all(torch.stack([cached_image for cached_image, _ in _items(cfg)]))
    torch.testing.assert_close(cached.extra.float(), truth.extra(), rtol=2 ** -10, atol=1e-5)  # fp16
    (patches, extra), label = cached[3]
    assert patches.shape == (9, 32) and extra.shape == (5, 32) and label == int(cached.labels[3])
    again, _ = patches_only.tokens(cfg.data, progress=False)
    assert torch.equal(again, tokens) and torch.equal(again, cached.tokens)


def _items(cfg: AutoencoderRunConfig):
    from fae.data.datasets import build_dataset

    dataset = build_dataset(cfg.data)
    return [dataset[i] for i in range(len(dataset))]
