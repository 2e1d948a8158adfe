"""``fae train pixel-autoencoder``: a conventional pixel VAE (``fae.autoencoder.pixel_autoencoder``),
the SD-VAE stand-in that ``fae experiment latent-space`` compares FAE latents with.

Data: images of ``data`` (uint8, mapped to [-1, 1]). Loss: ``l1_weight * |x_hat - x| +
kl_weight * KL(q(z|x) || N(0, I))``, both means per element. The export (``run_dir/export``) holds
the EMA weights and the per-channel statistics of the posterior means of the first
``stats_images`` training images, which a latent cache records for the generator.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

from fae.autoencoder.pixel_autoencoder import PixelAutoencoder, PixelAutoencoderConfig
from fae.autoencoder.vae import gaussian_kl
from fae.data.batches import iterate_batches
from fae.data.datasets import DataConfig, build_dataset, synthetic_images
from fae.errors import ConfigError
from fae.evaluation.recon import mean_image_scores
from fae.images import quantize, to_unit_range
from fae.stats import ChannelStats
from fae.training.config import OptimConfig, TrainConfig
from fae.training.preflight import data_checks
from fae.training.stage import Stage


@dataclass
class PixelAutoencoderLoss:
    """Args: l1_weight: weight of the mean absolute pixel error; kl_weight: beta of the KL term
    (SD-VAE's 1e-6; our choice here)."""

    l1_weight: float = 1.0
    kl_weight: float = 1.0e-6


@dataclass
class PixelAutoencoderEval:
    """Args: split / limit: held-out images whose L1 and PSNR are reported; batch_size: per pass."""

    split: str = "test"
    limit: int = 256
    batch_size: int = 128


@dataclass
class PixelAutoencoderRunConfig:
    """``fae train pixel-autoencoder`` config: train / model / data / loss / eval / stats_images."""

    train: TrainConfig = field(default_factory=lambda: TrainConfig(
        run_dir="runs/pixel_autoencoder", steps=1000, batch_size=64, ema_decay=0.999,
        optim=OptimConfig(lr=1e-3, schedule="cosine", warmup_steps=50)))
    model: PixelAutoencoderConfig = field(default_factory=PixelAutoencoderConfig)
    data: DataConfig = field(default_factory=DataConfig)
    loss: PixelAutoencoderLoss = field(default_factory=PixelAutoencoderLoss)
    eval: PixelAutoencoderEval = field(default_factory=PixelAutoencoderEval)
    stats_images: int = 2000

    def validate(self) -> None:
        if self.stats_images < 1:
            raise ConfigError(f"config key 'stats_images' must be >= 1, got {self.stats_images}")
        if self.loss.l1_weight < 0 or self.loss.kl_weight < 0:
            raise ConfigError(f"config keys 'loss.l1_weight' / 'loss.kl_weight' must be >= 0, got "
                              f"{self.loss.l1_weight} / {self.loss.kl_weight}")
        self.model.validate()
        self.data.validate()


def _images(data: DataConfig, count: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 images [n, C, H, W] and labels [n] of the first ``count`` items of ``data`` (no flips)."""
    dataset = build_dataset(replace(data, flip=False))
    n = len(dataset) if count is None else min(count, len(dataset))
    parts = list(iterate_batches(dataset, 512, range(n)))
    return torch.cat([x for x, _ in parts]), torch.cat([y for _, y in parts])


class PixelAutoencoderStage(Stage):
    """Args: config: a :class:`PixelAutoencoderRunConfig`."""

    name = "pixel-autoencoder"

    def __init__(self, config: PixelAutoencoderRunConfig):
        config.validate()
        self.config = config

    def build_models(self, device):
        return {"autoencoder": PixelAutoencoder(self.config.model).to(device)}

    def ema_modules(self) -> list[str]:
        return ["autoencoder"]

    def inputs(self):
        """The training and held-out images."""
        return data_checks(self.config.data, self.config.data.split, self.config.eval.split)

    def synthetic_batch(self, size, device):
        return [synthetic_images(self.config.data, size, device), torch.zeros(size, dtype=torch.long, device=device)]

    def train_dataset(self):
        return build_dataset(self.config.data)

    def loss(self, phase, batch, models, step):
        images, _ = batch  # uint8 [b, C, H, W]
        x = to_unit_range(images)  # [b, C, H, W] in [-1, 1]
        out = models["autoencoder"](x)
        l1 = (out["recon"] - x).abs().mean()
        kl = gaussian_kl(out["mean"], out["logvar"]).mean()
        loss = self.config.loss.l1_weight * l1 + self.config.loss.kl_weight * kl
        return loss, {"l1": l1.detach(), "kl": kl.detach()}

    @torch.no_grad()
    def evaluate(self, models, step: int, run_dir: Path) -> dict[str, float]:
        """Held-out L1 (in [-1, 1] units) and PSNR (uint8 rule) of posterior-mean reconstructions."""
        model, ev = models["autoencoder"], self.config.eval
        images, _ = _images(replace(self.config.data, split=ev.split), ev.limit)
        parts = [model.decode(model.encode(images[i:i + ev.batch_size])).cpu()
                 for i in range(0, len(images), ev.batch_size)]
        recon = torch.cat(parts)  # [n, C, H, W] in [0, 1]
        scores = mean_image_scores(images, quantize(recon))
        return {"l1": float((to_unit_range(recon) - to_unit_range(images)).abs().mean()),
                "psnr": float(scores["psnr"])}

    @torch.no_grad()
    def export(self, models, run_dir: Path) -> Path:
        model = models["autoencoder"]
        images, _ = _images(self.config.data, self.config.stats_images)
        stats = ChannelStats(model.config.latent_channels)
        for i in range(0, len(images), 256):
            stats.update(model.encode(images[i:i + 256]).movedim(1, -1))  # [b, h, w, c]
        model.set_latent_stats(*stats.mean_std())
        return model.save_pretrained(Path(run_dir) / "export")

    def describe(self) -> dict[str, str]:
        cfg = self.config.model
        params = sum(p.numel() for p in PixelAutoencoder(cfg).parameters())
        return {"pixel autoencoder": f"{cfg.image_size} px -> {cfg.latent_channels}x{cfg.grid[0]}x{cfg.grid[1]} "
                                     f"({cfg.levels} stride-2 levels at width {cfg.width}; {params / 1e6:.2f}M "
                                     f"parameters)",
                "loss": f"{self.config.loss.l1_weight:g} * L1 + {self.config.loss.kl_weight:g} * KL"}


CONFIG_CLASS = PixelAutoencoderRunConfig


def build_stage(cfg: PixelAutoencoderRunConfig) -> PixelAutoencoderStage:
    return PixelAutoencoderStage(cfg)
