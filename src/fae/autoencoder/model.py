"""The FAE model object: frozen-backbone tokens <-> latent z <-> tokens (<-> pixels).

    images --backbone--> tokens x [B, N, D] --normalise--> encoder --> (mu, log sigma^2) [B, N, 2c]
       --> z [B, c, h, w] --> feature decoder --> x_hat (normalised) --denormalise--> [B, N, D]
       --> pixel decoder (optional, engineer F's ``PixelDecoder``) --> images in [0, 1]

An export is a folder with ``config.json`` + ``model.safetensors`` (Hugging Face layout). It
records which backbone the FAE was trained on (name, resolution, width, grid), the feature
normalisation statistics, the latent per-channel mean / std (measured after training, for the
generator), the pixel decoder's config when one is attached, and an identity hash of the latent
space (see :meth:`FAE.identity`). The backbone's own weights are never saved: it is loaded from
the registry on first use, or attached with :meth:`FAE.attach_backbone`; either way a backbone
that differs from the recorded one is refused.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from fae.autoencoder.encoder import EncoderConfig, build_encoder, with_layout_of_old_exports
from fae.autoencoder.extra_tokens import ExtraTokenDecoder, ExtraTokens, attention_heads
from fae.autoencoder.feature_decoder import FeatureDecoder, FeatureDecoderConfig
from fae.autoencoder.normalization import FeatureNormalizer
from fae.autoencoder.pixel_decoder import PixelDecoder
from fae.autoencoder.vae import DiagonalGaussian, gaussian_kl
from fae.backbones.base import BackboneOutput
from fae.backbones.registry import get_info, load_backbone
from fae.config import from_dict, to_dict
from fae.errors import BackboneMismatchError, CheckpointError, ConfigError
from fae.export import CONFIG_FILE, WEIGHTS_FILE, Exportable, load_strict, read_export_config, resolve_folder
from fae.images import check_float_range, from_unit_range
from fae.io import safetensors_sha256

# Tensors that define the latent space (what a latent cache must agree on); see FAE.identity.
_IDENTITY_PREFIXES = ("normalizer.", "encoder.", "decoder.")


@dataclass
class FAEConfig:
    """Architecture of one FAE (``model:`` in the autoencoder run config; saved in its export).

    Args:
        backbone: registry name of the frozen backbone it was trained on. The record of the
            export: users name the backbone once, in the run config's ``backbone:`` section, and
            the autoencoder stage fills this field (and ``resolution``) from it.
        resolution: backbone input size in pixels; null = the registry's default.
        token_dim: backbone width D; null = from the registry (a given value is checked).
        grid: token grid (h, w); null = from the registry.
        latent_channels: c, the latent width per token (paper 32).
        feature_norm: "dataset" = per-channel mean/std of the training tokens (see
            ``normalization.py``); "none" = raw tokens.
        encoder: encoder settings (kind attention | linear | transformer).
        decoder: feature decoder settings.
        extra_tokens: what happens to the backbone's CLS / register tokens - "none" (dropped:
            every export before this option), "pass_through" (carried beside the reconstruction
            unchanged) or "reconstruct" (decoded from the latent); see ``extra_tokens.py``.
        extra_count: how many extra tokens (CLS + registers); null = the backbone registry's
            ``prefix_tokens`` (DINOv2 1, with registers 5). Only read when extra_tokens != "none".
    """

    backbone: str = "dinov2-g14"
    resolution: int | None = None
    token_dim: int | None = None
    grid: tuple[int, int] | None = None
    latent_channels: int = 32
    feature_norm: Literal["dataset", "none"] = "dataset"
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    decoder: FeatureDecoderConfig = field(default_factory=FeatureDecoderConfig)
    extra_tokens: ExtraTokens = "none"
    extra_count: int | None = None

    def validate(self) -> None:
        if self.latent_channels < 1:
            raise ConfigError(f"config key 'model.latent_channels' must be >= 1, got {self.latent_channels}")
        if self.extra_count is not None and self.extra_count < 0:
            raise ConfigError(f"config key 'model.extra_count' must be >= 0 or null, got {self.extra_count}")

    def resolved(self) -> "FAEConfig":
        """A copy with resolution / token_dim / grid (and extra_count when extra tokens are kept)
        filled from the backbone registry (no weights)."""
        needs_count = self.extra_tokens != "none" and self.extra_count is None
        if None not in (self.resolution, self.token_dim, self.grid) and not needs_count:
            return self
        info = get_info(self.backbone, resolution=self.resolution)
        if needs_count and info.prefix_tokens == 0:
            raise ConfigError(f"config key 'model.extra_tokens' is '{self.extra_tokens}', but backbone "
                              f"'{self.backbone}' has no CLS or register tokens; use 'none'")
        count = info.prefix_tokens if needs_count else self.extra_count
        if None not in (self.resolution, self.token_dim, self.grid):
            return replace(self, extra_count=count)
        for key, known in (("token_dim", info.dim), ("grid", tuple(info.grid))):
            given = getattr(self, key)
            if given is not None and (tuple(given) if key == "grid" else given) != known:
                raise ConfigError(f"config key 'model.{key}' is {given}, but backbone '{self.backbone}' "
                                  f"at {info.resolution} px has {known}; leave it null")
        return replace(self, resolution=info.resolution, token_dim=info.dim, grid=tuple(info.grid),
                       extra_count=count)


def config_from_export(settings: dict[str, Any], prefix: str = "config") -> FAEConfig:
    """The :class:`FAEConfig` an export's ``config`` section records (older exports: the encoder
    layout they were written with, ``with_layout_of_old_exports``)."""
    settings = {**settings, "encoder": with_layout_of_old_exports(settings.get("encoder", {}))}
    return from_dict(FAEConfig, settings, prefix=prefix)


class FAE(Exportable, nn.Module):
    """Feature auto-encoder over a frozen backbone's patch tokens.

    Args:
        config: the architecture; missing backbone dims are looked up in the registry.
    """

    export_format = "fae-autoencoder"

    def __init__(self, config: FAEConfig):
        super().__init__()
        config = config.resolved()
        self.config = config
        dim, grid, c = config.token_dim, tuple(config.grid), config.latent_channels
        self.normalizer = FeatureNormalizer(dim, enabled=config.feature_norm == "dataset")
        self.encoder = build_encoder(config.encoder, dim, grid, c)
        self.decoder = FeatureDecoder(config.decoder, dim, grid, c)
        if config.extra_tokens == "reconstruct":  # absent otherwise: older exports load unchanged
            self.extra_normalizer = FeatureNormalizer(dim, enabled=config.feature_norm == "dataset")
            self.extra_decoder = ExtraTokenDecoder(dim, config.extra_count, attention_heads(dim, config.decoder.heads))
        # Per-channel statistics of the latent mean over the training set (for the generator).
        self.register_buffer("latent_mean", torch.zeros(c))
        self.register_buffer("latent_std", torch.ones(c))
        self.pixel_decoder: nn.Module | None = None
        object.__setattr__(self, "_backbone", None)  # not a submodule: never saved, never trained

    # ---- shapes and helpers ------------------------------------------------------------------

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        """(c, h, w) of one latent."""
        return (self.config.latent_channels, *self.config.grid)

    @property
    def num_tokens(self) -> int:
        return self.config.grid[0] * self.config.grid[1]

    def _device(self) -> torch.device:
        return self.latent_mean.device

    def _check_tokens(self, tokens: torch.Tensor) -> None:
        want = (self.num_tokens, self.config.token_dim)
        if tokens.ndim != 3 or tuple(tokens.shape[1:]) != want:
            raise BackboneMismatchError(
                f"FAE (backbone '{self.config.backbone}') expects tokens [B, {want[0]}, {want[1]}], "
                f"got {list(tokens.shape)}: the features come from a different backbone or resolution")

    def _to_latent_grid(self, x: torch.Tensor) -> torch.Tensor:
        B, _, c = x.shape
        h, w = self.config.grid
        return x.transpose(1, 2).reshape(B, c, h, w)  # [B, N, c] -> [B, c, h, w]

    # ---- backbone ----------------------------------------------------------------------------

    @property
    def backbone(self) -> nn.Module:
        """The frozen backbone, loaded from the registry on first use."""
        if self._backbone is None:
            self.attach_backbone(load_backbone(self.config.backbone, device=self._device(),
                                               resolution=self.config.resolution))
        return self._backbone

    def attach_backbone(self, backbone: nn.Module) -> "FAE":
        """Use ``backbone`` for images; refused unless it is the one this FAE was trained on."""
        info, cfg = backbone.info, self.config
        got = (info.name, info.resolution, info.dim, tuple(info.grid))
        want = (cfg.backbone, cfg.resolution, cfg.token_dim, tuple(cfg.grid))
        if got != want:
            raise BackboneMismatchError(
                f"this FAE was trained on backbone '{want[0]}' at {want[1]} px (D={want[2]}, grid "
                f"{want[3]}), but was given '{got[0]}' at {got[1]} px (D={got[2]}, grid {got[3]})")
        object.__setattr__(self, "_backbone", backbone)
        return self

    def tokens_from(self, images_or_tokens: torch.Tensor) -> torch.Tensor:
        """images [B, C, H, W] (through the backbone) or raw tokens [B, N, D] -> raw tokens [B, N, D].

        Images are uint8 in [0, 255] or float in [0, 1]; float images in another range (the [-1, 1]
        of diffusers, or 0-255 floats) are an ImageRangeError saying how to rescale them, rather
        than latents of silently wrong inputs."""
        x = images_or_tokens
        if x.ndim == 4:
            check_float_range(x, 0.0, 1.0, "FAE images")
            x = self.backbone(x)  # [B, N, D] float32
        self._check_tokens(x)
        return x.to(self._device(), torch.float32)

    # ---- the auto-encoder ----------------------------------------------------------------------

    def posterior(self, tokens: torch.Tensor) -> DiagonalGaussian:
        """Raw tokens [B, N, D] -> q(z|x) with mean / logvar [B, N, c]."""
        return DiagonalGaussian(self.encoder(self.normalizer.normalize(tokens)))  # moments [B, N, 2c]

    def encode(self, images_or_tokens: torch.Tensor, sample: bool = False,
               generator: torch.Generator | None = None) -> torch.Tensor:
        """Images (uint8, or float in [0, 1]) or raw tokens -> latent z [B, c, h, w]: the posterior
        mean, or a sample."""
        post = self.posterior(self.tokens_from(images_or_tokens))
        return self._to_latent_grid(post.sample(generator) if sample else post.mean)

    def encode_moments(self, images_or_tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Images or raw tokens -> the posterior's (mean, log sigma^2), each [B, c, h, w] on the
        latent grid (what a VAE's latent distribution is built from, e.g. for diffusers)."""
        post = self.posterior(self.tokens_from(images_or_tokens))
        return self._to_latent_grid(post.mean), self._to_latent_grid(post.logvar)

    def decode_normalized(self, z: torch.Tensor) -> torch.Tensor:
        """z [B, c, h, w] -> tokens in the normalised feature space [B, N, D] (the training target)."""
        if tuple(z.shape[1:]) != self.latent_shape:
            raise ConfigError(f"FAE latents must be [B, {', '.join(map(str, self.latent_shape))}], "
                              f"got {list(z.shape)}")
        return self.decoder(z.to(self._device(), torch.float32))

    def decode_features(self, z: torch.Tensor, requires_grad: bool = False) -> torch.Tensor:
        """z [B, c, h, w] -> reconstructed tokens [B, N, D] in the backbone's raw feature scale.

        Without autograd history unless ``requires_grad=True`` (then the caller's grad mode holds):
        users decode for results, and training steps call ``forward`` / ``decode_normalized``."""
        with _grad_context(requires_grad):
            return self.normalizer.denormalize(self.decode_normalized(z))

    def forward(self, tokens: torch.Tensor, sample: bool = True,
                extra: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Training pass on raw tokens [B, N, D] (and, with extra_tokens "reconstruct", the raw
        CLS / register tokens ``extra`` [B, P, D]).

        Returns tensors only (DDP-friendly): ``target`` and ``recon`` [B, N, D] in the normalised
        feature space (the stage Ia L2 is taken there), posterior ``mean`` / ``logvar`` [B, N, c];
        given ``extra``: ``extra_target`` / ``extra_recon`` [B, P, D] (normalised by their own stats).
        The sample's noise comes from the global torch RNG (the engine seeds it per step).
        """
        self._check_tokens(tokens)
        target = self.normalizer.normalize(tokens.float())  # [B, N, D]
        post = DiagonalGaussian(self.encoder(target))  # [B, N, c] each
        z = self._to_latent_grid(post.sample() if sample else post.mean)  # [B, c, h, w]
        recon = self.decoder(z)  # [B, N, D]
        out = {"target": target, "recon": recon, "mean": post.mean, "logvar": post.logvar}
        if extra is not None:
            self._check_extra(extra)
            out["extra_target"] = self.extra_normalizer.normalize(extra.float())  # [B, P, D]
            out["extra_recon"] = self.extra_decoder(recon)  # [B, P, D]
        return out

    # ---- CLS / register tokens (``extra_tokens.py``) -----------------------------------------

    def _check_extra(self, extra: torch.Tensor) -> None:
        if self.config.extra_tokens != "reconstruct":
            raise ConfigError(f"this FAE has extra_tokens '{self.config.extra_tokens}': it does not "
                              f"reconstruct CLS / register tokens (train one with extra_tokens: reconstruct)")
        want = (self.config.extra_count, self.config.token_dim)
        if extra.ndim != 3 or tuple(extra.shape[1:]) != want:
            raise BackboneMismatchError(f"FAE expects extra (CLS + register) tokens [B, {want[0]}, {want[1]}], "
                                        f"got {list(extra.shape)}")

    def decode_extra(self, z: torch.Tensor) -> torch.Tensor:
        """z [B, c, h, w] -> reconstructed CLS / register tokens [B, P, D] in the raw scale
        (extra_tokens "reconstruct" only)."""
        self._check_extra(torch.empty(0, self.config.extra_count or 0, self.config.token_dim))
        return self.extra_normalizer.denormalize(self.extra_decoder(self.decode_normalized(z)))

    def reconstruct(self, out: BackboneOutput, extra_tokens: ExtraTokens | None = None) -> BackboneOutput:
        """A backbone's output -> the FAE's reconstruction of it through the posterior mean:
        patches decode_features(encode(patches)); CLS / registers per ``extra_tokens`` (default:
        the FAE's own mode; "pass_through" works with any FAE, "reconstruct" needs one trained so)."""
        mode = extra_tokens or self.config.extra_tokens
        z = self.encode(out.patches)  # [B, c, h, w]
        hidden = self.decode_normalized(z)  # [B, N, D], normalised
        patches = self.normalizer.denormalize(hidden)
        if mode == "none":
            return BackboneOutput(patches)
        if mode == "pass_through":
            return BackboneOutput(patches, out.cls, out.registers)
        self._check_extra(torch.empty(0, self.config.extra_count or 0, self.config.token_dim))
        extra = self.extra_normalizer.denormalize(self.extra_decoder(hidden))  # [B, P, D]
        return BackboneOutput.from_extra(patches, extra)

    def outputs_from(self, images: torch.Tensor) -> BackboneOutput:
        """images [B, C, H, W] -> the backbone's patches with its CLS / register tokens."""
        out = self.backbone.forward_all(images)
        self._check_tokens(out.patches)
        device = self._device()
        return BackboneOutput(*(t.to(device, torch.float32) if t is not None else None for t in out))

    def set_extra_stats(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        """Per-channel mean / std [D] of the training CLS / register tokens ("reconstruct" only)."""
        self._check_extra(torch.empty(0, self.config.extra_count or 0, self.config.token_dim))
        self.extra_normalizer.set_stats(mean.to(self._device()), std.to(self._device()))

    # ---- pixels ------------------------------------------------------------------------------

    def set_pixel_decoder(self, module: nn.Module | None) -> "FAE":
        """Attach a ``PixelDecoder`` (raw tokens -> images in [-1, 1]); it is saved in the export."""
        if module is not None and (module.token_dim, tuple(module.grid)) != (self.config.token_dim,
                                                                             tuple(self.config.grid)):
            raise BackboneMismatchError(
                f"pixel decoder takes tokens of width {module.token_dim} on grid {tuple(module.grid)}, "
                f"this FAE makes width {self.config.token_dim} on grid {tuple(self.config.grid)}")
        self.pixel_decoder = module
        return self

    def decode_features_to_pixels(self, tokens: torch.Tensor) -> torch.Tensor:
        """Raw tokens [B, N, D] -> images [B, C, H, W] in [0, 1] through the pixel decoder."""
        if self.pixel_decoder is None:
            raise CheckpointError("this FAE has no pixel decoder: train one with `fae train pixel-decoder` "
                                  "and attach it with FAE.set_pixel_decoder(...)")
        return from_unit_range(self.pixel_decoder(tokens))

    def decode(self, z: torch.Tensor, requires_grad: bool = False) -> torch.Tensor:
        """z [B, c, h, w] -> images [B, C, H, W] in [0, 1] (needs a pixel decoder); without
        autograd history unless ``requires_grad=True`` (see :meth:`decode_features`)."""
        with _grad_context(requires_grad):
            return self.decode_features_to_pixels(self.decode_features(z, requires_grad=True))

    # ---- statistics --------------------------------------------------------------------------

    def set_feature_stats(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        """Per-channel mean / std [D] of the training tokens (see ``normalization.py``)."""
        self.normalizer.set_stats(mean.to(self._device()), std.to(self._device()))

    def set_latent_stats(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        """Per-channel mean / std [c] of the encoded training latents (read by the generator)."""
        c = self.config.latent_channels
        if mean.shape != (c,) or std.shape != (c,):
            raise ConfigError(f"latent statistics must have shape [{c}], got {list(mean.shape)} / {list(std.shape)}")
        self.latent_mean.copy_(mean)
        self.latent_std.copy_(std)

    # ---- export ------------------------------------------------------------------------------

    def _tensors(self) -> dict[str, torch.Tensor]:
        return {k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()}

    def identity(self) -> str:
        """sha256 (hex) of the tensors that define the latent space: normaliser, encoder, decoder.

        Two FAEs with the same identity map the same tokens to the same latents and back; the
        latent statistics and the pixel decoder are left out so that attaching a pixel decoder
        later does not invalidate a latent cache written by this FAE.
        """
        tensors = {k: v for k, v in self._tensors().items() if k.startswith(_IDENTITY_PREFIXES)}
        return safetensors_sha256(tensors)

    def export_config(self) -> dict[str, Any]:
        cfg = self.config
        pixel = self.pixel_decoder.export_config() if self.pixel_decoder is not None else None
        return {"identity": self.identity(),
                "backbone": {"name": cfg.backbone, "resolution": cfg.resolution, "dim": cfg.token_dim,
                             "grid": list(cfg.grid)},
                "latent_shape": list(self.latent_shape),
                "feature_norm": {"kind": cfg.feature_norm, "mean": self.normalizer.mean.tolist(),
                                 "std": self.normalizer.std.tolist()},
                "latent_stats": {"mean": self.latent_mean.tolist(), "std": self.latent_std.tolist()},
                "config": to_dict(cfg), "pixel_decoder": pixel}

    def export_tensors(self) -> dict[str, torch.Tensor]:
        return self._tensors()

    @classmethod
    def from_export(cls, config: dict[str, Any], tensors: dict[str, torch.Tensor], folder: Path) -> "FAE":
        if "config" not in config:
            raise CheckpointError(f"'{folder / CONFIG_FILE}' has no 'config' section")
        model = cls(config_from_export(config["config"]))
        if config.get("pixel_decoder"):
            model.set_pixel_decoder(PixelDecoder.from_export_config(config["pixel_decoder"]))
        load_strict(model, tensors, folder)
        if model.identity() != config.get("identity"):
            raise CheckpointError(f"'{folder / WEIGHTS_FILE}' does not hash to the identity recorded in "
                                  f"'{folder / CONFIG_FILE}': the export is corrupt or was edited")
        return model

    @classmethod
    def from_pretrained(cls, name_or_folder: str | Path, device: str | torch.device = "cpu",
                        backbone: nn.Module | None = None, revision: str | None = None) -> "FAE":
        """Rebuild an export (a folder or a Hub repo id: ``Exportable.from_pretrained``);
        ``backbone`` (optional) is attached after the mismatch check."""
        model = super().from_pretrained(name_or_folder, device, revision)
        if backbone is not None:
            model.attach_backbone(backbone)
        return model

    @classmethod
    def check_export(cls, folder: str | Path, pixel_decoder: bool = False) -> dict[str, Any]:
        """The export's ``config.json``, checked without reading its weights (a check before
        compute): an FAE export with its weights file and, with ``pixel_decoder``, a pixel decoder
        (what turns latents into images). A CheckpointError naming the folder otherwise."""
        config = read_export_config(folder, cls.export_format, cls.export_version)
        if not (resolve_folder(folder) / WEIGHTS_FILE).is_file():
            raise CheckpointError(f"FAE export '{folder}' has no '{WEIGHTS_FILE}': export it again")
        if pixel_decoder and not config.get("pixel_decoder"):
            raise CheckpointError(f"the FAE export '{folder}' has no pixel decoder, so it cannot turn latents "
                                  f"into images: pass the export of stage II (`fae train pixel-decoder` with "
                                  f"stage=finetune writes run_dir/export), which holds one")
        return config


def _grad_context(requires_grad: bool) -> contextlib.AbstractContextManager:
    """``torch.no_grad()``, or the caller's grad mode unchanged when ``requires_grad``."""
    return contextlib.nullcontext() if requires_grad else torch.no_grad()


def fae_loss(out: dict[str, torch.Tensor], kl_weight: float) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Stage Ia loss on ``FAE.forward``'s output: ||x_hat - x||^2 + beta * KL (paper).

    Both terms are means per element (MSE over the B*N*D normalised feature entries, KL over the
    B*N*c latent entries), so ``kl_weight`` = beta does not depend on the batch or grid size. With
    extra_tokens "reconstruct" the mean L2 over the B*P*D normalised CLS / register entries is added
    (weight 1: our choice, the paper does not train a CLS reconstruction).
    """
    rec = (out["recon"].float() - out["target"].float()).square().mean()
    kl = gaussian_kl(out["mean"], out["logvar"]).mean()
    loss = rec + kl_weight * kl
    logs = {"rec": rec.detach(), "kl": kl.detach()}
    if "extra_recon" in out:  # extra_tokens "reconstruct": the CLS / register L2, per element too
        rec_extra = (out["extra_recon"].float() - out["extra_target"].float()).square().mean()
        loss = loss + rec_extra
        logs["rec_extra"] = rec_extra.detach()
    return loss, logs
