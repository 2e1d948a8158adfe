"""Stage Ia of the paper: the FAE encoder + feature decoder (``fae train autoencoder``).

The frozen backbone turns images into tokens x; the FAE learns x -> z -> x_hat with
``||x_hat - x||^2 + beta * KL`` on per-channel standardised features (see
``fae/autoencoder/normalization.py``). Two ways to feed it:

- ``cache_tokens: true`` (small datasets, the demo): the backbone runs once over the train and
  held-out splits; tokens are stored as safetensors (fp16 by default) under ``token_cache_dir``
  (default ``run_dir/token_cache``), keyed by a hash of the data config and backbone, and reused
  by any later run with the same key.
- ``cache_tokens: false`` (ImageNet): images are read and the backbone runs inside every step.

The feature statistics are measured once per run folder (first ``stats_images`` training images,
sharded over ranks) and kept in ``run_dir/feature_stats.safetensors``, so a resume does not
measure them again.

Held-out metrics (each evaluation): cosine similarity and relative L2 of reconstructed vs original
raw tokens, normalised MSE, KL, latent per-channel mean/std, and optionally a linear probe (head
trained on raw pooled train features, scored on raw vs reconstructed held-out features - the
paper's protocol). The export (``run_dir/export``) is an ``FAE.save_pretrained`` folder whose
latent statistics are measured on the training set; they are also written to
``run_dir/latent_stats.json``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import Dataset

from fae.autoencoder.model import FAE, FAEConfig, fae_loss
from fae.data.datasets import DataConfig
from fae.errors import ConfigError
from fae.training.config import OptimConfig, TrainConfig
from fae.training.stage import Stage
from fae.training.stages.autoencoder_data import (TokenDataset, feature_metrics, load_or_extract_tokens,
                                                  feature_stats, measure_latent_stats)


def _paper_train() -> TrainConfig:
    # Paper, stage Ia: AdamW (0.9, 0.999), peak LR 1e-4, cosine, 1000 warm-up steps, 1M steps, batch 1024.
    return TrainConfig(run_dir="runs/autoencoder", steps=1_000_000, batch_size=1024,
                       optim=OptimConfig(lr=1e-4, schedule="cosine", warmup_steps=1000))


@dataclass
class LossConfig:
    """Stage Ia loss weights.

    Args:
        kl_weight: beta on the KL term (paper: unstated). Our default 1e-4, with both terms as
            per-element means (``fae_loss``): it keeps the posterior a proper distribution (finite
            sigma, bounded latent scale for the generator) while costing well under 1% of a typical
            reconstruction loss.
    """

    kl_weight: float = 1e-4

    def validate(self) -> None:
        if self.kl_weight < 0:
            raise ConfigError(f"config key 'loss.kl_weight' must be >= 0, got {self.kl_weight}")


@dataclass
class EvalConfig:
    """Held-out evaluation.

    Args:
        split: held-out split of ``data`` ("test" for Fashion-MNIST, "val" for ImageNet).
        limit: number of held-out images (the first ones); null = all.
        batch_size: images/tokens per forward pass.
        probe: also run the linear probe (needs labels and ``cache_tokens``).
        probe_train_limit: training images for the probe head; null = all cached.
        probe_epochs: L-BFGS iterations of the probe.
    """

    split: str = "test"
    limit: int | None = 1000
    batch_size: int = 64
    probe: bool = False
    probe_train_limit: int | None = None
    probe_epochs: int = 100


@dataclass
class AutoencoderRunConfig:
    """``fae train autoencoder`` config.

    Args:
        train: loop settings (paper defaults above).
        model: the FAE architecture (backbone, c, encoder kind, decoder size).
        data: training images.
        loss: stage Ia loss weights.
        eval: held-out metrics.
        backbone_weights: local folder/file with the backbone weights (default: registry lookup).
        cache_tokens: run the backbone once and train on cached tokens (needs ``data.flip: false``).
        token_cache_dir: where cached tokens live; null = ``run_dir/token_cache``.
        cache_dtype: storage dtype of cached tokens.
        stats_images: training images used to measure the feature and latent statistics (the
            first ones; all cached tokens when fewer).
    """

    train: TrainConfig = field(default_factory=_paper_train)
    model: FAEConfig = field(default_factory=FAEConfig)
    data: DataConfig = field(default_factory=DataConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    backbone_weights: str | None = None
    cache_tokens: bool = False
    token_cache_dir: str | None = None
    cache_dtype: str = "float16"
    stats_images: int = 10_000

    def validate(self) -> None:
        if self.cache_tokens and self.data.flip:
            raise ConfigError("config key 'data.flip' must be false with cache_tokens: cached tokens "
                              "cannot be re-augmented")
        if self.cache_dtype not in ("float16", "bfloat16", "float32"):
            raise ConfigError(f"config key 'cache_dtype' must be float16, bfloat16 or float32, got "
                              f"'{self.cache_dtype}'")
        if self.eval.probe and not self.cache_tokens:
            raise ConfigError("config key 'eval.probe' needs cache_tokens: true (the probe head is "
                              "trained on cached raw train features)")
        if self.stats_images < 1:
            raise ConfigError(f"config key 'stats_images' must be >= 1, got {self.stats_images}")


class AutoencoderStage(Stage):
    """Args: config: an :class:`AutoencoderRunConfig`."""

    name = "autoencoder"

    def __init__(self, config: AutoencoderRunConfig):
        self.config = config
        self.backbone: nn.Module | None = None
        self.fae: FAE | None = None
        self.tokens: dict[str, TokenDataset] = {}  # split -> cached tokens (cache_tokens mode)

    # ---- models and data -----------------------------------------------------------------------

    def build_models(self, device):
        device = torch.device(device)
        with device:  # meta: sizes from the backbone registry, no weights, no data
            fae = FAE(self.config.model)
        if device.type != "meta":
            self.fae = fae
        return {"fae": fae}

    def ema_modules(self):
        return ["fae"]

    def setup(self, device: torch.device) -> None:
        """Load the frozen backbone, cache tokens (optional), measure the feature statistics."""
        from fae.backbones import load_backbone

        cfg = self.config
        self.backbone = load_backbone(cfg.model.backbone, weights=cfg.backbone_weights, device=device,
                                      resolution=self.fae.config.resolution)
        self.fae.attach_backbone(self.backbone)
        if cfg.cache_tokens:
            for split in dict.fromkeys([cfg.data.split, cfg.eval.split]):
                self.tokens[split] = load_or_extract_tokens(self, split)
        if cfg.model.feature_norm == "dataset":
            mean, std = feature_stats(self)
            self.fae.set_feature_stats(mean, std)

    def train_dataset(self) -> Dataset:
        if self.config.cache_tokens:
            return self.tokens[self.config.data.split]
        from fae.data.datasets import build_dataset

        return build_dataset(self.config.data)

    def raw_tokens(self, x: torch.Tensor) -> torch.Tensor:
        """A batch from either dataset -> raw tokens [B, N, D] float32 (images go through the backbone)."""
        if x.ndim == 4:  # images [B, C, H, W]
            return self.backbone(x)
        return x.float()  # cached tokens [B, N, D]

    def loss(self, phase, batch, models, step):
        x, _ = batch
        out = models["fae"](self.raw_tokens(x), sample=True)  # target/recon [B, N, D], mean/logvar [B, N, c]
        return fae_loss(out, self.config.loss.kl_weight)

    # ---- evaluation and export -------------------------------------------------------------------

    def evaluate(self, models, step, run_dir):
        from fae.training.stages.autoencoder_data import held_out_batches, linear_probe_metrics

        fae = models["fae"]
        results = feature_metrics(fae, held_out_batches(self), self.config.loss.kl_weight)
        if self.config.eval.probe:
            results.update(linear_probe_metrics(self, fae))
        return results

    def export(self, models, run_dir: Path):
        from fae.io import atomic_save_json

        fae = models["fae"]
        mean, std = measure_latent_stats(self, fae)
        fae.set_latent_stats(mean, std)
        atomic_save_json({"mean": mean.tolist(), "std": std.tolist(), "identity": fae.identity()},
                         Path(run_dir) / "latent_stats.json")
        return fae.save_pretrained(Path(run_dir) / "export")

    def describe(self):
        cfg = self.config
        fae_cfg = cfg.model.resolved()
        with torch.device("meta"):
            fae = FAE(fae_cfg)
        count = lambda m: f"{sum(p.numel() for p in m.parameters()) / 1e6:.2f}M"  # noqa: E731
        return {"parameters": f"encoder {count(fae.encoder)} ({cfg.model.encoder.kind}), feature decoder "
                              f"{count(fae.decoder)} (paper: 38.17M attention encoder, 170.43M decoder)",
                "backbone": f"{fae_cfg.backbone} at {fae_cfg.resolution} px -> tokens "
                            f"{fae_cfg.grid[0]}x{fae_cfg.grid[1]}x{fae_cfg.token_dim}",
                "latent": f"{cfg.model.latent_channels}x{fae_cfg.grid[0]}x{fae_cfg.grid[1]} "
                          f"(encoder: {cfg.model.encoder.kind})",
                "loss": f"||x_hat - x||^2 + {cfg.loss.kl_weight:g} * KL on {cfg.model.feature_norm}"
                        "-normalised features",
                "tokens": "cached once (" + cfg.cache_dtype + ")" if cfg.cache_tokens
                else "backbone runs every step"}


CONFIG_CLASS = AutoencoderRunConfig


def build_stage(cfg: AutoencoderRunConfig) -> AutoencoderStage:
    return AutoencoderStage(cfg)
