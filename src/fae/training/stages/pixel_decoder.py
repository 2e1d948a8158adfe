"""Stages Ib and II of the paper: training the pixel decoder (``fae train pixel-decoder``).

- ``stage=noisy-features`` (Ib, the "Gaussian embedding decoder"): the decoder learns to paint the
  image from the frozen backbone's tokens plus Gaussian noise, so it tolerates the imperfect x_hat
  the FAE will later feed it. Independent of stage Ia. Exports the decoder alone
  (``run_dir/export``: config.json + model.safetensors).
- ``stage=finetune`` (II): the same decoder (loaded from ``init_from``, the Ib export) is fine-tuned
  on the frozen FAE's reconstructions x_hat = D_feat(E(x)). Exports a complete FAE folder (the FAE
  of ``fae`` with this decoder attached), so ``FAE.from_pretrained`` restores the image path.

Noise scale (Ib). We define the "norm scale" of the embeddings as the RMS of their entries,
``s = sqrt(mean_{n,t,d} x_{n,t,d}^2)`` over the first ``noise.scale_images`` training images.
Noise ``eps ~ N(0, (sigma * s)^2)`` per entry then has ``E||eps||^2 = sigma^2 * E||x||^2`` for a
token x, i.e. the noise norm is sigma times the RMS token norm (paper: sigma = 0.4 for DINOv2).
"""
from __future__ import annotations

import contextlib
import copy
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Iterator, Literal

import torch
from torch import nn
from torch.utils.data import Dataset

from fae.autoencoder.discriminator import DiscriminatorConfig, PatchDiscriminator
from fae.autoencoder.losses import (PixelLossConfig, adaptive_weight, hinge_d_loss, hinge_g_loss,
                                    reconstruction_loss)
from fae.autoencoder.pixel_decoder import PixelDecoder, PixelDecoderConfig
from fae.images import from_unit_range, to_unit_range
from fae.data.datasets import DataConfig
from fae.errors import ConfigError
from fae.training.config import OptimConfig, TrainConfig
from fae.training.stage import Phase, Stage
from fae.training.stages.pixel_decoder_inputs import CachedInputs, add_token_noise, map_dataset, token_rms

GENERATOR, DISCRIMINATOR = "generator", "discriminator"


@dataclass
class NoiseConfig:
    """Gaussian noise on the input tokens (stage Ib; set sigma to 0 for none).

    Args:
        sigma: noise std relative to the token norm scale (paper: 0.4 for DINOv2).
        mode: "fixed" = every sample gets sigma; "uniform" = per-sample sigma ~ U[0, sigma]
            (our option, the RAE-style variant).
        scale: the token RMS s; null = measured from the training data at start-up.
        scale_images: how many training images the measurement uses (the first ones).
    """

    sigma: float = 0.4
    mode: Literal["fixed", "uniform"] = "fixed"
    scale: float | None = None
    scale_images: int = 512


@dataclass
class EvalConfig:
    """Held-out reconstruction metrics and the grid PNG written at each evaluation.

    Args:
        split: dataset split of the held-out images.
        limit: number of held-out images (the first ones).
        batch_size: images per forward pass.
        rfid: also compute rFID (InceptionV3; slow on CPU).
        grid_images: images shown in ``run_dir/recon_<step>.png``.
    """

    split: str = "test"
    limit: int = 256
    batch_size: int = 64
    rfid: bool = False
    grid_images: int = 8


@dataclass
class PixelDecoderRunConfig:
    """``fae train pixel-decoder`` config.

    Args:
        stage: "noisy-features" (Ib) or "finetune" (II).
        backbone: registry name of the frozen backbone (must match the FAE's in stage II).
        backbone_resolution: backbone input size; null = the registry default.
        backbone_weights: local weights folder/file for the backbone (null = default lookup).
        fae: FAE export folder; required for finetune, optional for Ib (then the evaluation also
            decodes the FAE reconstructions).
        init_from: stage-Ib export to start from; required for finetune.
        cache_tokens: run the frozen networks over the training set once at start-up and keep the
            decoder's clean inputs (Ib: backbone tokens; II: FAE x_hat) in memory (our option for
            small datasets / CPU; noise is still drawn fresh every step). Needs data.flip=false.
        cache_dtype: storage dtype of that cache.
    """

    stage: Literal["noisy-features", "finetune"] = "noisy-features"
    backbone: str = "efficientnet-lite0"
    backbone_resolution: int | None = None
    backbone_weights: str | None = None
    fae: str | None = None
    init_from: str | None = None
    cache_tokens: bool = False
    cache_dtype: Literal["float32", "float16"] = "float16"
    data: DataConfig = field(default_factory=DataConfig)
    pixel_decoder: PixelDecoderConfig = field(default_factory=PixelDecoderConfig)
    noise: NoiseConfig = field(default_factory=NoiseConfig)
    loss: PixelLossConfig = field(default_factory=PixelLossConfig)
    discriminator: DiscriminatorConfig = field(default_factory=DiscriminatorConfig)
    disc_optim: OptimConfig = field(default_factory=OptimConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def validate(self) -> None:
        if self.stage == "finetune" and not (self.fae and self.init_from):
            raise ConfigError("stage=finetune needs config keys 'fae' (the FAE export) and 'init_from' "
                              "(the stage-Ib pixel decoder export)")
        if self.cache_tokens and self.data.flip:
            raise ConfigError("cache_tokens=true caches the tokens of unflipped images: set data.flip=false")
        if self.noise.sigma < 0:
            raise ConfigError(f"config key 'noise.sigma' must be >= 0, got {self.noise.sigma}")
        if self.noise.scale is not None and self.noise.scale <= 0:
            raise ConfigError(f"config key 'noise.scale' must be > 0 or null, got {self.noise.scale}")
        if self.loss.perceptual == "lpips" and not (self.loss.lpips_vgg_path and self.loss.lpips_heads_path):
            raise ConfigError("loss.perceptual=lpips needs local weight files: set 'loss.lpips_vgg_path' "
                              "(torchvision VGG16 state dict) and 'loss.lpips_heads_path' (lpips v0.1 "
                              "vgg.pth), or use loss.perceptual=backbone (offline)")


CONFIG_CLASS = PixelDecoderRunConfig


@contextlib.contextmanager
def frozen(module: nn.Module) -> Iterator[nn.Module]:
    """Temporarily turn off ``requires_grad`` so a forward pass records no graph to its weights."""
    flags = [p.requires_grad for p in module.parameters()]
    module.requires_grad_(False)
    try:
        yield module
    finally:
        for p, flag in zip(module.parameters(), flags):
            p.requires_grad_(flag)


def _same_batch(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a is b or (a.shape == b.shape and a.device == b.device and torch.equal(a, b))


def _unwrap(module: nn.Module) -> nn.Module:
    from fae.training.wrappers import unwrap

    return unwrap(module)


# ---- the stage -----------------------------------------------------------------------------------

class PixelDecoderStage(Stage):
    """Stage Ib / II. Frozen helpers (backbone, FAE, perceptual net) live here, not in the models.

    Args:
        config: the run config.
    """

    name = "pixel-decoder"

    def __init__(self, config: PixelDecoderRunConfig):
        from fae.backbones import get_info

        self.config = config
        self.info = get_info(config.backbone, config.backbone_resolution)
        self.backbone: nn.Module | None = None
        self.fae: nn.Module | None = None
        self.perceptual: nn.Module | None = None
        self.ib_decoder: PixelDecoder | None = None  # stage II: the untouched Ib weights, for the grid
        self.token_scale: float | None = config.noise.scale
        self._train_inputs: torch.Tensor | None = None  # cache_tokens: clean inputs [N, T, D]
        self.eval_inputs: dict[str, torch.Tensor] | None = None  # held-out images + inputs, built once
        self._cache: tuple[torch.Tensor, torch.Tensor] | None = None  # (images, fakes) of the last G phase

    @property
    def finetune(self) -> bool:
        return self.config.stage == "finetune"

    @property
    def use_gan(self) -> bool:
        return self.config.loss.gan_weight > 0

    # -- models --

    def build_models(self, device: torch.device | str) -> dict[str, nn.Module]:
        """The decoder (+ discriminator); in stage II the decoder starts from the Ib export."""
        cfg = self.config
        meta = torch.device(device).type == "meta"  # --dry-run: no memory, no weights
        with torch.device("meta") if meta else contextlib.nullcontext():
            decoder = PixelDecoder(cfg.pixel_decoder, self.info.dim, self.info.grid)
            models: dict[str, nn.Module] = {"pixel_decoder": decoder}
            if self.use_gan:
                models["discriminator"] = PatchDiscriminator(cfg.discriminator, cfg.pixel_decoder.out_channels)
        if self.finetune and not meta:
            decoder.load_state_dict(self._load_ib_decoder().state_dict())
        return {k: m.to(device) for k, m in models.items()}

    def _load_ib_decoder(self) -> PixelDecoder:
        loaded = PixelDecoder.from_pretrained(self.config.init_from)
        with torch.device("meta"):  # only its config is compared
            built = PixelDecoder(self.config.pixel_decoder, self.info.dim, self.info.grid).export_config()
        if loaded.export_config() != built:
            raise ConfigError(f"init_from '{self.config.init_from}' holds a pixel decoder "
                              f"{loaded.export_config()}, but this config builds {built}; make "
                              f"'pixel_decoder' and the backbone match the stage-Ib run")
        return loaded

    def setup(self, device: torch.device) -> None:
        """Frozen backbone, FAE (finetune / optional in Ib), perceptual net, measured noise scale."""
        from fae.autoencoder.perceptual import build_perceptual
        from fae.backbones import load_backbone

        cfg = self.config
        self.backbone = load_backbone(cfg.backbone, weights=cfg.backbone_weights, device=device,
                                      resolution=cfg.backbone_resolution)
        if cfg.fae:
            from fae.autoencoder.model import FAE

            self.fae = FAE.from_pretrained(cfg.fae, device=device, backbone=self.backbone)
            self.fae.requires_grad_(False).eval()
        self.perceptual = build_perceptual(cfg.loss.perceptual, self.backbone, cfg.loss.lpips_vgg_path,
                                           cfg.loss.lpips_heads_path)
        if self.perceptual is not None:
            self.perceptual.to(device)
        if self.finetune:  # the untouched Ib weights, for the comparison column of the grid
            self.ib_decoder = self._load_ib_decoder().to(device).requires_grad_(False).eval()
        if cfg.cache_tokens:
            dtype = getattr(torch, cfg.cache_dtype)
            self._train_inputs = map_dataset(self.clean_inputs, self._base_dataset(), dtype=dtype)
        if self.token_scale is None and cfg.noise.sigma > 0:
            sample = (self._train_inputs[:cfg.noise.scale_images] if cfg.cache_tokens else
                      map_dataset(self.clean_inputs, self._base_dataset(), cfg.noise.scale_images))
            self.token_scale = token_rms(sample)  # [n, N, D] -> s
        self._log_description()

    def _log_description(self) -> None:
        """Print the stage's settings (perceptual choice, measured noise scale) into the run log."""
        from fae.distributed import is_main

        if is_main():
            print("\n".join(f"{key}: {value}" for key, value in self.describe().items()), flush=True)

    def ema_modules(self) -> list[str]:
        return ["pixel_decoder"] if self.config.train.ema_decay is not None else []

    def phases(self) -> list[Phase]:
        cfg = self.config
        phases = [Phase(GENERATOR, ["pixel_decoder"], cfg.train.optim)]
        if self.use_gan:
            phases.append(Phase(DISCRIMINATOR, ["discriminator"], cfg.disc_optim,
                                start_step=cfg.loss.gan_start_step))
        return phases

    def _base_dataset(self) -> Dataset:
        from fae.data.datasets import build_dataset

        return build_dataset(self.config.data)

    def train_dataset(self) -> Dataset:
        """Items (image, label), or (image, label, cached clean input) with cache_tokens."""
        base = self._base_dataset()
        if self._train_inputs is None:
            return base
        if len(self._train_inputs) != len(base):
            raise ConfigError(f"token cache holds {len(self._train_inputs)} items, the dataset {len(base)}")
        return CachedInputs(base, self._train_inputs)

    # -- inputs --

    @torch.no_grad()
    def clean_inputs(self, images: torch.Tensor) -> torch.Tensor:
        """images -> the decoder's clean input [B, N, D]: backbone tokens (Ib) or FAE x_hat (II)."""
        tokens = self.backbone(images)  # [B, N, D] raw
        if self.finetune:
            return self.fae.decode_features(self.fae.encode(tokens))  # x_hat [B, N, D]
        return tokens

    @torch.no_grad()
    def input_tokens(self, batch: Any) -> torch.Tensor:
        """A training batch -> decoder input [B, N, D]; stage Ib adds the Gaussian noise."""
        images = batch[0] if isinstance(batch, (list, tuple)) else batch
        cached = isinstance(batch, (list, tuple)) and len(batch) > 2
        tokens = batch[2].float() if cached else self.clean_inputs(images)  # [B, N, D]
        noise = self.config.noise
        if noise.sigma > 0:
            tokens = add_token_noise(tokens, noise.sigma, self.token_scale, noise.mode)
        return tokens

    # -- losses --

    def loss(self, phase: str, batch: Any, models: dict[str, nn.Module], step: int
             ) -> tuple[torch.Tensor, dict[str, float | torch.Tensor]]:
        if phase == DISCRIMINATOR:
            return self._discriminator_loss(batch, models)
        return self._generator_loss(batch, models, step)

    def _generator_loss(self, batch: Any, models: dict[str, nn.Module], step: int):
        cfg = self.config.loss
        decoder = models["pixel_decoder"]
        device = _unwrap(decoder).head.weight.device
        images = batch[0] if isinstance(batch, (list, tuple)) else batch
        real = to_unit_range(images.to(device))  # [B, C, H, W] in [-1, 1]
        fake = decoder(self.input_tokens(batch), clamp=False)  # [B, C, H, W]
        rec, logs = reconstruction_loss(fake, real, cfg.l1_weight, cfg.l2_weight)
        total = rec
        if self.perceptual is not None:
            perc = self.perceptual(fake, real).mean()
            total = total + cfg.perceptual_weight * perc
            logs["perceptual"] = perc.detach()
        if self.use_gan and step >= cfg.gan_start_step:
            with frozen(models["discriminator"]) as disc:  # L_G must not reach D's weights
                g_loss = hinge_g_loss(disc(fake))
            weight = (adaptive_weight(total, g_loss, _unwrap(decoder).last_layer, cfg.adaptive_max)
                      if cfg.adaptive_gan_weight else torch.ones((), device=device))
            total = total + cfg.gan_weight * weight * g_loss
            logs.update(g_loss=g_loss.detach(), gan_adaptive_weight=weight)
        self._cache = (images, fake.detach())
        logs["loss"] = total.detach()
        return total, logs

    def _discriminator_loss(self, batch: Any, models: dict[str, nn.Module]):
        images = batch[0] if isinstance(batch, (list, tuple)) else batch
        disc = models["discriminator"]
        device = next(_unwrap(disc).parameters()).device
        real = to_unit_range(images.to(device))
        if self._cache is not None and _same_batch(self._cache[0], images):
            fake = self._cache[1]  # the generator phase's output for this very batch
        else:
            with torch.no_grad():
                fake = models["pixel_decoder"](self.input_tokens(batch), clamp=False)
        logits_real, logits_fake = disc(real), disc(fake.detach())  # [B, 1, h, w]
        d_loss = hinge_d_loss(logits_real, logits_fake)
        return d_loss, {"d_loss": d_loss.detach(), "logits_real": logits_real.detach().mean(),
                        "logits_fake": logits_fake.detach().mean()}

    # -- evaluation / export --

    def eval_dataset(self):
        from fae.data.datasets import build_dataset

        ev = self.config.eval
        return build_dataset(replace(self.config.data, limit=ev.limit, flip=False), split=ev.split)

    def evaluate(self, models: dict[str, nn.Module], step: int, run_dir: Path) -> dict[str, float]:
        from fae.training.stages.pixel_decoder_eval import evaluate_reconstructions

        return evaluate_reconstructions(self, _unwrap(models["pixel_decoder"]), step, Path(run_dir))

    def export(self, models: dict[str, nn.Module], run_dir: Path) -> Path | None:
        decoder = copy.deepcopy(_unwrap(models["pixel_decoder"])).cpu().eval()
        out = Path(run_dir) / "export"
        if not self.finetune:
            return decoder.save_pretrained(out)
        fae = copy.deepcopy(self.fae).cpu()
        fae.set_pixel_decoder(decoder)
        return fae.save_pretrained(out)

    def describe(self) -> dict[str, str]:
        cfg = self.config
        lines = {
            "stage": f"{cfg.stage} ({'II: fine-tune on FAE x_hat' if self.finetune else 'Ib: noisy backbone features'})",
            "backbone": f"{self.info.name} at {self.info.resolution} px: {self.info.grid[0]}x{self.info.grid[1]} "
                        f"tokens of width {self.info.dim}",
            "pixel decoder": f"ViT {cfg.pixel_decoder.depth}x{cfg.pixel_decoder.dim}, {cfg.pixel_decoder.heads} heads, "
                             f"{cfg.pixel_decoder.image_size} px, {cfg.pixel_decoder.out_channels} channels",
            "perceptual loss": _describe_perceptual(cfg.loss),
            "loss weights": f"l1 {cfg.loss.l1_weight}, l2 {cfg.loss.l2_weight}, perceptual "
                            f"{cfg.loss.perceptual_weight}, gan {cfg.loss.gan_weight} (from step "
                            f"{cfg.loss.gan_start_step}, adaptive={cfg.loss.adaptive_gan_weight})",
        }
        if not self.finetune:
            scale = f"{self.token_scale:.4g}" if self.token_scale is not None else \
                f"measured from {cfg.noise.scale_images} training images at start-up"
            lines["noise"] = f"sigma {cfg.noise.sigma} ({cfg.noise.mode}) x token RMS scale {scale}"
        else:
            lines["init_from"] = str(cfg.init_from)
        if cfg.fae:
            lines["fae"] = str(cfg.fae)
        return lines


def _describe_perceptual(loss: PixelLossConfig) -> str:
    if loss.perceptual == "lpips":
        return f"lpips (VGG16 '{loss.lpips_vgg_path}', heads '{loss.lpips_heads_path}')"
    if loss.perceptual == "backbone":
        return "backbone (feature matching on the frozen backbone's LayerNorm-ed tokens)"
    return "none"


def build_stage(cfg: PixelDecoderRunConfig) -> PixelDecoderStage:
    return PixelDecoderStage(cfg)
