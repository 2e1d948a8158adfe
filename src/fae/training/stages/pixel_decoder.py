"""Stages Ib and II of the paper: training the pixel decoder (``fae train pixel-decoder``).

- ``stage=noisy-features`` (Ib, the "Gaussian embedding decoder"): the decoder learns to paint the
  image from the frozen backbone's tokens plus Gaussian noise (``fae.autoencoder.noise``: sigma
  relative to the token norm scale), so it tolerates the imperfect x_hat the FAE will later feed
  it. Independent of stage Ia; the backbone is the ``backbone:`` section. Exports the decoder alone
  (``run_dir/export``: config.json + model.safetensors).
- ``stage=finetune`` (II): the same decoder (loaded from ``init_from``, the Ib export) is fine-tuned
  on the frozen FAE's reconstructions x_hat = D_feat(E(x)), noise-free unless ``noise.sigma`` is set
  (the paper adds noise in Ib only). The backbone is the one the FAE export
  (``fae``) records; a ``backbone:`` section that disagrees is an error (it may still name the
  ``weights`` location). Exports a complete FAE folder (the FAE of ``fae`` with this decoder
  attached), so ``FAE.from_pretrained`` restores the image path.

Two phases train on every batch (paper: TiTok-style GAN + perceptual + reconstruction loss):
``decoder`` (the pixel decoder; metrics ``decoder/loss``, ``decoder/l1``, ...) and, with
``loss.gan_weight > 0``, ``discriminator`` (``discriminator/loss``; with ``loss.lecam_weight > 0``
also ``discriminator/lecam``, the LeCam regularisation, whose moving averages are buffers of the
discriminator and so part of every checkpoint).

``latent_noise.std > 0`` (stage II; our option for STARFlow's ``finetuned_vae``): Gaussian noise of
std ``std`` x the FAE's per-channel ``latent_std`` goes on the latents z = E(x) before the frozen
feature decoder, so the decoder learns to paint D_feat(z + noise): the latents a flow trained with
``flow.noise_std = std`` samples. Only the pixel decoder trains; the export keeps the FAE's identity
and serves as ``flow_sampling.finetuned_decoder`` (``fae.autoencoder.noise.LatentNoiseConfig``).

``cache_tokens: true`` (small datasets): clean inputs come from the shared token cache (the one
stage Ia fills); stage II turns cached tokens into x_hat through the frozen FAE once, in memory
(float32); with latent noise it keeps the latents z instead (the feature decoder then runs every
step, on fresh noise). Noise is still drawn fresh every step.
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

from fae import distributed as du
from fae.autoencoder.discriminator import DiscriminatorConfig, PatchDiscriminator
from fae.autoencoder.losses import (PixelLossConfig, adaptive_weight, hinge_d_loss, hinge_g_loss,
                                    lecam_regularization, reconstruction_loss)
from fae.autoencoder.model import FAE, FAEConfig, config_from_export
from fae.autoencoder.noise import LatentNoiseConfig, NoiseConfig, add_latent_noise, add_token_noise, token_rms
from fae.autoencoder.perceptual import build_perceptual
from fae.autoencoder.pixel_decoder import PixelDecoder, PixelDecoderConfig
from fae.backbones.config import BackboneConfig
from fae.backbones.extract import extract_tokens
from fae.backbones.token_cache import TokenCache, dtype_named
from fae.backbones.weights import RANDOM_WEIGHTS
from fae.config import OMIT_IF_DEFAULT
from fae.data.batches import iterate_batches, map_batches
from fae.data.datasets import DataConfig, build_dataset, synthetic_images
from fae.errors import ConfigError
from fae.export import CONFIG_FILE, read_export_config, resolve_folder
from fae.images import to_unit_range
from fae.training.config import OptimConfig, TrainConfig
from fae.training.preflight import (backbone_check, data_checks, export_check, fae_export_check,
                                    lpips_checks)
from fae.training.stage import Phase, Stage
from fae.training.stages.pixel_decoder_heldout import HeldOut, PixelDecoderEvalConfig
from fae.training.wrappers import unwrap

DECODER, DISCRIMINATOR = "decoder", "discriminator"  # the two phases (and metric prefixes)


@dataclass
class PixelDecoderRunConfig:
    """``fae train pixel-decoder`` config.

    Args:
        stage: "noisy-features" (Ib) or "finetune" (II).
        backbone: the frozen backbone (stage Ib: ``backbone.name`` is required). Stage II reads it
            from the FAE export: the fields set there must agree with the export's record, and
            ``backbone.weights`` says where the weights are.
        fae: FAE export folder; required for finetune, optional for Ib (then the evaluation also
            decodes the FAE reconstructions).
        init_from: stage-Ib export to start from; required for finetune.
        cache_tokens: take the backbone tokens of the training images from the token cache
            (our option for small datasets / CPU). Needs data.flip=false.
        token_cache_dir: the token cache folder, shared by stages and runs; null = ``run_dir/token_cache``.
        cache_dtype: storage dtype of cached tokens.
        latent_noise: stage II only: noise on the FAE latents before the feature decoder, in units
            of the FAE's ``latent_std`` (``LatentNoiseConfig``; null = none, today's stage II).
    """

    stage: Literal["noisy-features", "finetune"] = "noisy-features"
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    fae: str | None = None
    init_from: str | None = None
    cache_tokens: bool = False
    token_cache_dir: str | None = None
    cache_dtype: Literal["float16", "bfloat16", "float32"] = "float16"
    data: DataConfig = field(default_factory=DataConfig)
    pixel_decoder: PixelDecoderConfig = field(default_factory=PixelDecoderConfig)
    noise: NoiseConfig = field(default_factory=NoiseConfig)
    loss: PixelLossConfig = field(default_factory=PixelLossConfig)
    discriminator: DiscriminatorConfig = field(default_factory=DiscriminatorConfig)
    disc_optim: OptimConfig = field(default_factory=OptimConfig)
    eval: PixelDecoderEvalConfig = field(default_factory=PixelDecoderEvalConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    # Added later: left out of saved configs while off, so earlier run folders resume unchanged.
    latent_noise: LatentNoiseConfig = field(default_factory=LatentNoiseConfig, metadata=OMIT_IF_DEFAULT)

    def validate(self) -> None:
        self.noise = self.noise.resolved(self.stage)  # null sigma: 0.4 in Ib, 0 in II (the run records it)
        if self.stage == "finetune" and not (self.fae and self.init_from):
            raise ConfigError("stage=finetune needs config keys 'fae' (the FAE export) and 'init_from' "
                              "(the stage-Ib pixel decoder export)")
        if self.latent_noise.enabled and self.stage != "finetune":
            raise ConfigError(f"config key 'latent_noise.std' ({self.latent_noise.std}) needs stage=finetune: the "
                              "noise goes on the FAE's latents, which stage Ib does not decode; set it to null")
        if self.cache_tokens and self.data.flip:
            raise ConfigError("cache_tokens=true caches the tokens of unflipped images: set data.flip=false")
        if self.loss.perceptual == "lpips" and not (self.loss.lpips_vgg_path and self.loss.lpips_heads_path):
            raise ConfigError("loss.perceptual=lpips needs local weight files: set 'loss.lpips_vgg_path' "
                              "(torchvision VGG16 state dict) and 'loss.lpips_heads_path' (lpips v0.1 "
                              "vgg.pth), or use loss.perceptual=backbone (offline)")
        if self.stage == "noisy-features" and self.backbone.name is None:
            raise ConfigError("stage=noisy-features needs config key 'backbone.name' (the frozen backbone "
                              "whose tokens the decoder learns to paint; `fae backbones` lists them)")

    def token_cache_folder(self) -> Path:
        return Path(self.token_cache_dir or Path(self.train.run_dir) / "token_cache")


CONFIG_CLASS = PixelDecoderRunConfig


def backbone_of(cfg: PixelDecoderRunConfig) -> BackboneConfig:
    """The backbone this run uses: the ``backbone:`` section (Ib), or the FAE export's record (II)."""
    if cfg.stage != "finetune":
        return cfg.backbone
    recorded = read_export_config(cfg.fae, FAE.export_format, FAE.export_version)["backbone"]
    given = {"name": cfg.backbone.name, "resolution": cfg.backbone.resolution}
    clash = {key: value for key, value in given.items() if value is not None and value != recorded[key]}
    if clash:
        raise ConfigError(f"config key 'backbone' sets {clash}, but the FAE export '{cfg.fae}' was trained "
                          f"on '{recorded['name']}' at {recorded['resolution']} px; stage II reads the "
                          "backbone from the FAE: drop those keys or make them agree")
    return BackboneConfig(name=recorded["name"], resolution=recorded["resolution"], weights=cfg.backbone.weights)


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


class WithInputs(Dataset):
    """Items ``(image, label, cached input)``: a dataset beside its precomputed clean inputs (decoder
    inputs [N, D], or FAE latents [c, h, w] with latent noise)."""

    def __init__(self, base: Dataset, inputs: torch.Tensor):
        if len(base) != len(inputs):
            raise ConfigError(f"the token cache gave {len(inputs)} items for a dataset of {len(base)}")
        self.base, self.inputs = base, inputs

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i: int):
        image, label = self.base[i]
        return image, label, self.inputs[i]


class PixelDecoderStage(Stage):
    """Stage Ib / II (``config``: the run config). Frozen helpers (backbone, FAE, perceptual net)
    live here, not in the models."""

    name = "pixel-decoder"

    def __init__(self, config: PixelDecoderRunConfig, stand_in_fae: bool = False):
        self.config = config
        # fae plan of stage II before its FAE is trained: the backbone section and the paper's FAE
        self.stand_in_fae = stand_in_fae
        self.backbone_config = config.backbone if stand_in_fae else backbone_of(config)
        self.info = self.backbone_config.info()
        self.backbone: nn.Module | None = None
        self.fae: nn.Module | None = None
        self.perceptual: nn.Module | None = None
        self.ib_decoder: PixelDecoder | None = None  # stage II: the untouched Ib weights, for comparison
        self.noise = config.noise.resolved(config.stage)  # sigma set (a config built without validate())
        self.token_scale: float | None = self.noise.scale
        self.latent_noise = config.latent_noise.std or 0.0  # x the FAE's latent_std; 0 = x_hat as is
        self.train_inputs: torch.Tensor | None = None  # cache_tokens: clean inputs [N, T, D] (latent noise: z)
        self.held_out: HeldOut | None = None  # held-out images + inputs, built once
        self._last: tuple[torch.Tensor, torch.Tensor] | None = None  # (images, fakes) of the decoder phase

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
                lecam_decay = cfg.loss.lecam_ema_decay if cfg.loss.lecam_weight > 0 else None
                models["discriminator"] = PatchDiscriminator(cfg.discriminator, cfg.pixel_decoder.out_channels,
                                                             lecam_decay)
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
        """Frozen backbone, FAE (finetune / optional in Ib), perceptual net, clean inputs, noise scale."""
        cfg = self.config
        self.backbone = self.backbone_config.load(device)
        if cfg.fae:  # the FAE refuses a backbone other than its own (BackboneMismatchError)
            self.fae = FAE.from_pretrained(cfg.fae, device=device, backbone=self.backbone)
            self.fae.requires_grad_(False).eval()
        self.perceptual = build_perceptual(cfg.loss.perceptual, self.backbone, cfg.loss.lpips_vgg_path,
                                           cfg.loss.lpips_heads_path, cfg.loss.perceptual_resolution)
        if self.perceptual is not None:
            self.perceptual.to(device)
        if self.finetune:
            self.ib_decoder = self._load_ib_decoder().to(device).requires_grad_(False).eval()
        if cfg.cache_tokens:
            tokens, _ = self.token_cache().tokens(cfg.data, progress=cfg.train.progress)  # [N, T, D]
            self.train_inputs = self.clean_from_tokens(tokens)
        if self.token_scale is None and self.noise.sigma > 0:
            self.token_scale = token_rms(self._scale_sample())  # [n, N, D] -> s
        if du.is_main():  # the run log states the perceptual choice and the measured noise scale
            print("\n".join(f"{key}: {value}" for key, value in self.describe().items()), flush=True)

    def inputs(self):
        """Training and held-out images, the backbone's weights, the LPIPS files (perceptual=lpips),
        the FAE export (stage II, or Ib with ``fae``) and the stage-Ib decoder a fine-tune starts from."""
        cfg = self.config
        checks = [*data_checks(cfg.data, cfg.data.split, cfg.eval.split), backbone_check(self.backbone_config)]
        if cfg.loss.perceptual == "lpips":
            checks += lpips_checks(cfg.loss.lpips_vgg_path, cfg.loss.lpips_heads_path)
        if cfg.fae:
            checks.append(fae_export_check(cfg.fae, "fae", "`fae train autoencoder --config ...` (stage Ia)"))
        if cfg.init_from:
            checks.append(export_check(cfg.init_from, PixelDecoder.export_format, "init_from",
                                       "`fae train pixel-decoder` with stage=noisy-features"))
        return checks

    def synthetic_setup(self, device):
        """Backbone, FAE (stage II; the export's architecture, or the paper's as a stand-in) and
        perceptual net with random weights; the noise scale taken as 1."""
        cfg = self.config
        self.backbone = replace(self.backbone_config, weights=RANDOM_WEIGHTS).load(device)
        helpers = {"backbone": self.backbone}
        if cfg.fae:
            if self.stand_in_fae:
                fae_config = FAEConfig(backbone=self.info.name, resolution=self.info.resolution)
            else:
                record = read_export_config(cfg.fae, FAE.export_format, FAE.export_version)["config"]
                fae_config = config_from_export(record)
            with torch.device(device):
                self.fae = FAE(fae_config).requires_grad_(False).eval()
            helpers["fae"] = self.fae
        vgg = RANDOM_WEIGHTS if cfg.loss.perceptual == "lpips" else None  # small: built on the CPU
        self.perceptual = build_perceptual(cfg.loss.perceptual, self.backbone, vgg, None,
                                           cfg.loss.perceptual_resolution)
        if self.perceptual is not None:
            helpers["perceptual"] = self.perceptual.to(device)
        self.token_scale = self.token_scale or 1.0
        return helpers

    def synthetic_batch(self, size, device):
        """(images, labels[, cached clean inputs]) as the training loader gives them."""
        images = synthetic_images(self.config.data, size, device)
        labels = torch.zeros(size, dtype=torch.long, device=device)
        if not self.config.cache_tokens:
            return [images, labels]
        shape = self.fae.latent_shape if self.latent_noise else (self.info.num_tokens, self.info.dim)
        return [images, labels, torch.randn(size, *shape, device=device)]

    def token_cache(self):
        """The shared token cache for this run's backbone (``token_cache_dir``)."""
        cfg = self.config
        return TokenCache(cfg.token_cache_folder(), self.backbone, self.backbone_config.weights,
                          dtype_named(cfg.cache_dtype), batch_size=cfg.eval.batch_size)

    def _scale_sample(self) -> torch.Tensor:
        """Clean inputs of the first ``noise.scale_images`` training images [n, N, D]."""
        n = self.noise.scale_images
        if self.train_inputs is not None and self.latent_noise:  # cached latents: their clean x_hat
            return map_batches(self.fae.decode_features, self.train_inputs[:n], self.config.eval.batch_size,
                               self.fae.latent_mean.device)
        if self.train_inputs is not None:
            return self.train_inputs[:n]
        base = build_dataset(replace(self.config.data, flip=False))
        indices = range(min(n, len(base)))
        return torch.cat([self.clean_inputs(images).cpu()
                          for images, _ in iterate_batches(base, self.config.eval.batch_size, indices)])

    def ema_modules(self) -> list[str]:
        return ["pixel_decoder"] if self.config.train.ema_decay is not None else []

    def phases(self) -> list[Phase]:
        cfg = self.config
        phases = [Phase(DECODER, ["pixel_decoder"], cfg.train.optim)]
        if self.use_gan:
            phases.append(Phase(DISCRIMINATOR, ["discriminator"], cfg.disc_optim,
                                start_step=cfg.loss.gan_start_step))
        return phases

    def train_dataset(self) -> Dataset:
        """Items (image, label), or (image, label, cached clean input) with cache_tokens."""
        base = build_dataset(self.config.data)
        return base if self.train_inputs is None else WithInputs(base, self.train_inputs)

    # -- inputs --

    @torch.no_grad()
    def clean_from_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        """Raw tokens [N, T, D] -> the decoder's clean inputs: the tokens themselves (Ib), or
        x_hat = D_feat(E(x)) through the frozen FAE (II; float32, on the CPU); with latent noise
        the latents z = E(x) [N, c, h, w], since the noise goes in before the feature decoder."""
        if not self.finetune:
            return tokens
        if self.latent_noise:
            return map_batches(self.fae.encode, tokens, self.config.eval.batch_size,
                               self.fae.latent_mean.device)  # z [N, c, h, w]
        return map_batches(lambda t: self.fae.decode_features(self.fae.encode(t)), tokens,
                           self.config.eval.batch_size, self.fae.latent_mean.device)  # x_hat [N, T, D]

    @torch.no_grad()
    def clean_inputs(self, images: torch.Tensor) -> torch.Tensor:
        """images -> the decoder's clean input [B, N, D]: backbone tokens (Ib) or FAE x_hat (II)."""
        tokens = self.backbone(images)  # [B, N, D] raw
        if self.finetune:
            return self.fae.decode_features(self.fae.encode(tokens))  # x_hat [B, N, D]
        return tokens

    @torch.no_grad()
    def input_tokens(self, batch: Any) -> torch.Tensor:
        """A training batch (images, labels[, cached input]) -> decoder input [B, N, D]; noise added
        when ``noise.sigma > 0`` (the default in stage Ib; stage II defaults to none: x_hat exactly).
        With ``latent_noise`` the input is x_hat of noisy latents (:meth:`noisy_latent_inputs`)."""
        if self.latent_noise:
            tokens = self.noisy_latent_inputs(batch)  # [B, N, D]
        else:
            tokens = batch[2].float() if len(batch) > 2 else self.clean_inputs(batch[0])  # [B, N, D]
        noise = self.noise
        if noise.sigma > 0:
            tokens = add_token_noise(tokens, noise.sigma, self.token_scale, noise.mode)
        return tokens

    @torch.no_grad()
    def noisy_latent_inputs(self, batch: Any) -> torch.Tensor:
        """x_hat of noisy latents D_feat(z + std * latent_std * eps), z = E(x) cached or encoded
        now: the latents a flow with ``noise_std = std`` samples, decoded to tokens.  [B, N, D]"""
        fae = self.fae
        z = batch[2].float() if len(batch) > 2 else fae.encode(self.backbone(batch[0]))  # [B, c, h, w]
        noisy = add_latent_noise(z.to(fae.latent_std.device), self.latent_noise, fae.latent_std)
        return fae.decode_features(noisy)  # [B, N, D]

    # -- losses --

    def loss(self, phase: str, batch: Any, models: dict[str, nn.Module], step: int
             ) -> tuple[torch.Tensor, dict[str, float | torch.Tensor]]:
        if phase == DISCRIMINATOR:
            return self._discriminator_loss(batch, models)
        return self._decoder_loss(batch, models, step)

    def _decoder_loss(self, batch: Any, models: dict[str, nn.Module], step: int):
        """lambda_rec * L1/L2 + lambda_perc * perceptual + lambda_GAN * w_adaptive * hinge G loss."""
        cfg = self.config.loss
        decoder = models["pixel_decoder"]
        device = unwrap(decoder).head.weight.device
        images = batch[0]
        real = to_unit_range(images.to(device))  # [B, C, H, W] in [-1, 1]
        fake = decoder(self.input_tokens(batch), clamp=False)  # [B, C, H, W]
        total, logs = reconstruction_loss(fake, real, cfg.l1_weight, cfg.l2_weight)
        if self.perceptual is not None:
            perc = self.perceptual(fake, real).mean()
            total = total + cfg.perceptual_weight * perc
            logs["perceptual"] = perc.detach()
        if self.use_gan and step >= cfg.gan_start_step:
            with frozen(models["discriminator"]) as disc:  # L_G must not reach D's weights
                g_loss = hinge_g_loss(disc(fake))
            weight = (adaptive_weight(total, g_loss, unwrap(decoder).last_layer, cfg.adaptive_max)
                      if cfg.adaptive_gan_weight else torch.ones((), device=device))
            total = total + cfg.gan_weight * weight * g_loss
            logs.update(g_loss=g_loss.detach(), gan_adaptive_weight=weight)
        self._last = (images, fake.detach())
        logs["loss"] = total.detach()
        return total, logs

    def _discriminator_loss(self, batch: Any, models: dict[str, nn.Module]):
        images = batch[0]
        disc = models["discriminator"]
        device = next(unwrap(disc).parameters()).device
        real = to_unit_range(images.to(device))
        last_images, last_fake = self._last if self._last is not None else (None, None)
        if last_images is images or (last_images is not None and last_images.shape == images.shape
                                     and torch.equal(last_images, images)):
            fake = last_fake  # the decoder phase's output for this very batch
        else:
            with torch.no_grad():
                fake = models["pixel_decoder"](self.input_tokens(batch), clamp=False)
        logits_real, logits_fake = disc(real), disc(fake.detach())  # [B, 1, h, w]
        d_loss = hinge_d_loss(logits_real, logits_fake)
        logs = {"d_loss": d_loss.detach(), "logits_real": logits_real.detach().mean(),
                "logits_fake": logits_fake.detach().mean()}
        lecam = unwrap(disc).lecam
        if lecam is not None:  # loss.lecam_weight > 0
            d_loss = d_loss + self.config.loss.lecam_weight * self._lecam(lecam, logits_real, logits_fake, logs)
        return d_loss, logs

    @staticmethod
    def _lecam(ema, logits_real: torch.Tensor, logits_fake: torch.Tensor, logs: dict) -> torch.Tensor:
        """Update the moving averages with this batch's mean logits (averaged over ranks, so every
        rank holds the same values), then R_LC against them (``lecam_regularization``)."""
        means = du.all_reduce_mean(torch.stack([logits_real.detach().float().mean(),
                                                logits_fake.detach().float().mean()]))
        ema.update(means[0], means[1])
        reg = lecam_regularization(logits_real, logits_fake, ema.real, ema.fake)
        logs.update(lecam=reg.detach(), lecam_ema_real=ema.real.clone(), lecam_ema_fake=ema.fake.clone())
        return reg

    # -- evaluation / export --

    def held_out_set(self) -> HeldOut:
        """The held-out images and their clean inputs (the frozen networks run over them once)."""
        if self.held_out is None:
            cfg = self.config
            data, size = replace(cfg.data, split=cfg.eval.split, limit=cfg.eval.limit, flip=False), cfg.eval.batch_size
            dataset = build_dataset(data)
            tokens = (self.token_cache().tokens(data, progress=False)[0] if cfg.cache_tokens
                      else extract_tokens(self.backbone, dataset, size, progress=False)[0])  # [N, T, D]
            self.held_out = HeldOut(dataset, tokens, self.fae, size)
        return self.held_out

    def evaluate(self, models: dict[str, nn.Module], step: int, run_dir: Path) -> dict[str, float]:
        decoder = unwrap(models["pixel_decoder"])
        decoders = {"Ib": self.ib_decoder, "II": decoder} if self.finetune else {"Ib": decoder}
        grid = Path(run_dir) / f"recon_{step:07d}.png"
        return self.held_out_set().evaluate(decoders, self.config.eval, grid)

    def export(self, models: dict[str, nn.Module], run_dir: Path) -> Path | None:
        decoder = copy.deepcopy(unwrap(models["pixel_decoder"])).cpu().eval()
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
            "backbone": self.backbone_config.describe() + (" (from the FAE export)" if self.finetune else ""),
            "pixel decoder": f"ViT {cfg.pixel_decoder.depth}x{cfg.pixel_decoder.dim}, {cfg.pixel_decoder.heads} heads, "
                             f"{cfg.pixel_decoder.image_size} px, {cfg.pixel_decoder.out_channels} channels",
            "perceptual loss": _describe_perceptual(cfg.loss),
            "loss weights": f"l1 {cfg.loss.l1_weight}, l2 {cfg.loss.l2_weight}, perceptual "
                            f"{cfg.loss.perceptual_weight}, gan {cfg.loss.gan_weight} (from step "
                            f"{cfg.loss.gan_start_step}, adaptive={cfg.loss.adaptive_gan_weight}), lecam "
                            f"{cfg.loss.lecam_weight} (ema decay {cfg.loss.lecam_ema_decay})",
        }
        if self.noise.sigma > 0:
            scale = f"{self.token_scale:.4g}" if self.token_scale is not None else \
                f"measured from {self.noise.scale_images} training images at start-up"
            lines["noise"] = f"sigma {self.noise.sigma} ({self.noise.mode}) x token RMS scale {scale}"
        else:
            lines["noise"] = "none: the decoder sees its clean inputs exactly" + (" (x_hat)" if self.finetune else "")
        if self.latent_noise:
            lines["latent noise"] = (f"std {self.latent_noise:g} x the FAE's per-channel latent std on z before the "
                                     f"feature decoder (STARFlow's finetuned_vae for a flow with noise_std "
                                     f"{self.latent_noise:g}: the export serves as flow_sampling.finetuned_decoder)")
        if self.finetune:
            lines["init_from"] = str(cfg.init_from)
        if cfg.fae:
            lines["fae"] = str(cfg.fae) + (" (not trained yet: planned with the paper's FAE architecture)"
                                           if self.stand_in_fae else "")
        if cfg.cache_tokens:
            lines["tokens"] = f"token cache ({cfg.cache_dtype}) in {cfg.token_cache_folder()}"
        return lines


def _describe_perceptual(loss: PixelLossConfig) -> str:
    if loss.perceptual == "lpips":
        return f"lpips (VGG16 '{loss.lpips_vgg_path}', heads '{loss.lpips_heads_path}')"
    if loss.perceptual == "backbone":
        return "backbone (feature matching on the frozen backbone's LayerNorm-ed tokens)"
    if loss.perceptual == "efficientnet":
        return f"efficientnet (LPIPS-style, early EfficientNet-Lite0 blocks at {loss.perceptual_resolution} px)"
    return "none"


PAPER_WIDTH = 1536  # DINOv2-g / SigLIP2-g tokens: the widths the paper's FAE architecture is built for


def build_plan_stage(cfg: PixelDecoderRunConfig) -> PixelDecoderStage:
    """``fae plan``'s stage: as ``build_stage``, but stage II whose FAE export does not exist yet
    is planned on the ``backbone:`` section with the paper's FAE architecture (said in describe)."""
    missing = cfg.stage == "finetune" and cfg.fae and not (resolve_folder(cfg.fae) / CONFIG_FILE).is_file()
    if missing and (cfg.backbone.name is None or cfg.backbone.info().dim != PAPER_WIDTH):
        raise ConfigError(f"stage II names the FAE export '{cfg.fae}', which does not exist yet, and its "
                          "architecture is what the plan needs: train stage Ia first (the paper's FAE "
                          f"stands in only on a {PAPER_WIDTH}-wide backbone named in backbone.name)")
    return PixelDecoderStage(cfg, stand_in_fae=bool(missing))


def build_stage(cfg: PixelDecoderRunConfig) -> PixelDecoderStage:
    return PixelDecoderStage(cfg)
