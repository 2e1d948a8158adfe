"""``AutoencoderFAE``: an FAE behind the VAE interface of diffusers, so a diffusers training script or
pipeline can use it where it expects ``AutoencoderKL``.

    vae = AutoencoderFAE.from_pretrained("runs/demo/pixel_decoder_ii/export")    # an FAE export
    latents = vae.encode(pixels).latent_dist.sample()                            # pixels in [-1, 1]
    latents = (latents - vae.config.shift_factor) * vae.config.scaling_factor    # ~ zero mean, unit std
    ...
    images = vae.decode(latents / vae.config.scaling_factor + vae.config.shift_factor).sample  # [-1, 1]

What diffusers expects of a VAE, and how the FAE fills it:

* ``encode(x).latent_dist``: diffusers' own ``DiagonalGaussianDistribution`` (``sample(generator)``,
  ``mode()``, ``mean``, ``std``, ``kl()``) over the FAE posterior's (mu, log sigma^2) on the latent grid
  [B, c, h, w]; ``x`` is float in [-1, 1] (diffusers' convention; the FAE itself takes [0, 1]).
  ``mode()`` is ``FAE.encode`` (the posterior mean).
* ``decode(z).sample``: ``FAE.decode(z)`` rescaled to [-1, 1]; z in the FAE's own scale.
* ``config.scaling_factor`` / ``config.shift_factor``: scalars such that ``(z - shift_factor) *
  scaling_factor`` has zero mean and unit variance over all latent entries (SD3 / Flux scripts
  apply both; SD / DiT scripts only the scale). They are pooled from per-channel latent statistics
  (``config.latents_mean`` / ``latents_std``): the ones passed in (e.g. a latent cache's
  ``LatentCache.stats()``), else the FAE export's own; an FAE without measured statistics has
  mean 0 / std 1, so 1.0 / 0.0.
* ``config.latent_channels`` (c), ``config.sample_size`` (the decoded image size in pixels),
  ``config.latent_size`` (the grid [h, w]: not a power-of-two downsampling of the image).

Why a diffusers ``ModelMixin`` + ``ConfigMixin`` rather than a plain ``nn.Module``: diffusers code
reads ``vae.config.*``, ``vae.dtype`` / ``vae.device`` and calls ``save_pretrained`` on pipeline
components; the mixins give exactly those, with diffusers' own semantics. The config records the
FAE's architecture (``fae_export``), so ``save_pretrained`` writes a diffusers folder that
:meth:`AutoencoderFAE.from_pretrained` (diffusers' loader) rebuilds; it also opens FAE exports.

The FAE computes in float32: after ``vae.to(dtype=torch.float16)`` (as diffusers scripts do with a
VAE) it runs under autocast in that dtype and returns latents / images in the input's dtype.

diffusers is an optional dependency: importing this module without it is a MissingExtraError.
"""
from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Any, Sequence

import torch

from fae.autoencoder import FAE
from fae.autoencoder.model import config_from_export
from fae.autoencoder.pixel_decoder import PixelDecoder
from fae.errors import CheckpointError, ImageRangeError, MissingExtraError, install_hint
from fae.export import CONFIG_FILE
from fae.images import check_float_range

try:  # the peer library is optional: importing this module is the moment it is needed
    from diffusers import ConfigMixin, ModelMixin
    from diffusers.configuration_utils import register_to_config
    from diffusers.models.autoencoders.vae import DecoderOutput, DiagonalGaussianDistribution
    from diffusers.models.modeling_outputs import AutoencoderKLOutput
except ImportError:
    raise MissingExtraError(f"fae.integrations.diffusers needs diffusers: {install_hint('bench')}") from None

# The parts of an FAE export's config.json that define its modules (its tensors hold the rest).
_ARCHITECTURE_KEYS = ("identity", "config", "pixel_decoder")


class AutoencoderFAE(ModelMixin, ConfigMixin):
    """The FAE as a diffusers VAE (see the module docstring for the interface).

    Args:
        fae_export: the FAE's architecture, as its export records it (``identity``, ``config``,
            ``pixel_decoder``); :meth:`from_fae` and :meth:`from_pretrained` fill it.
        scaling_factor, shift_factor: latent scale and shift for diffusion models (null = pooled
            from ``latents_mean`` / ``latents_std``).
        latents_mean, latents_std: per-channel latent statistics [c] (null = the FAE's own).
        latent_channels, sample_size, latent_size: filled from the FAE (a given value must agree).
        fae: an existing FAE to wrap (not recorded in the config; its weights are the model's).
    """

    config_name = CONFIG_FILE
    ignore_for_config = ["fae"]

    @register_to_config
    def __init__(self, fae_export: dict[str, Any], scaling_factor: float | None = None,
                 shift_factor: float | None = None, latents_mean: Sequence[float] | None = None,
                 latents_std: Sequence[float] | None = None, latent_channels: int | None = None,
                 sample_size: int | None = None, latent_size: Sequence[int] | None = None, fae: FAE | None = None):
        super().__init__()
        self.fae = fae if fae is not None else _build_fae(fae_export)
        mean, std = _latent_stats(self.fae, latents_mean, latents_std)
        pooled_shift, pooled_scale = pooled_scale_shift(mean, std)
        derived = {"latent_channels": self.fae.config.latent_channels, "sample_size": _image_size(self.fae),
                   "latent_size": list(self.fae.config.grid)}
        for key, value in derived.items():
            given = {"latent_channels": latent_channels, "sample_size": sample_size, "latent_size": latent_size}[key]
            if given is not None and (list(given) if key == "latent_size" else given) != value:
                raise CheckpointError(f"AutoencoderFAE config '{key}' is {given}, but its FAE has {value}")
        self.register_to_config(
            fae_export={k: fae_export.get(k) for k in _ARCHITECTURE_KEYS}, **derived,
            scaling_factor=float(pooled_scale if scaling_factor is None else scaling_factor),
            shift_factor=float(pooled_shift if shift_factor is None else shift_factor),
            latents_mean=mean.tolist(), latents_std=std.tolist())

    # ---- construction ---------------------------------------------------------------------------

    @classmethod
    def from_fae(cls, fae: FAE, scaling_factor: float | None = None, shift_factor: float | None = None,
                 latents_mean: torch.Tensor | Sequence[float] | None = None,
                 latents_std: torch.Tensor | Sequence[float] | None = None) -> "AutoencoderFAE":
        """Wrap ``fae`` (its weights are shared, not copied); statistics as in the class Args."""
        return cls(fae_export=fae.export_config(), scaling_factor=scaling_factor, shift_factor=shift_factor,
                   latents_mean=_as_list(latents_mean), latents_std=_as_list(latents_std),
                   fae=fae).to(fae.latent_mean.device).eval()

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | Path, **kwargs) -> "AutoencoderFAE":
        """An FAE export (folder, run folder, or whatever ``FAE.from_pretrained`` takes), or a
        folder this class's ``save_pretrained`` wrote. For an FAE export, keyword arguments are
        those of :meth:`from_fae` plus ``device``; otherwise those of diffusers' loader."""
        folder = Path(pretrained_model_name_or_path)
        if not _is_diffusers_folder(folder):
            device = kwargs.pop("device", "cpu")
            return cls.from_fae(FAE.from_pretrained(pretrained_model_name_or_path, device=device), **kwargs)
        # Built on the CPU and filled from the file: meta-device initialisation would leave the
        # FAE's computed (unsaved) buffers, e.g. RoPE tables, empty.
        model = super().from_pretrained(pretrained_model_name_or_path, low_cpu_mem_usage=False, **kwargs)
        recorded = model.config.fae_export.get("identity")
        if recorded is not None and model.fae.identity() != recorded:
            raise CheckpointError(f"weights in '{folder}' do not hash to the FAE identity in its {CONFIG_FILE}")
        return model

    # ---- the VAE interface ----------------------------------------------------------------------

    def encode(self, x: torch.Tensor, return_dict: bool = True) -> AutoencoderKLOutput | tuple:
        """Images float [B, C, H, W] in [-1, 1] -> ``AutoencoderKLOutput(latent_dist=...)`` over
        latents [B, c, h, w] (in ``x``'s dtype)."""
        if not x.is_floating_point():
            raise ImageRangeError(f"AutoencoderFAE.encode takes float images in [-1, 1] (the diffusers "
                                  f"convention), got dtype {x.dtype}: use x / 127.5 - 1")
        check_float_range(x, -1.0, 1.0, "AutoencoderFAE.encode images (the diffusers convention)")
        with self._compute():
            mean, logvar = self.fae.encode_moments((x.float() + 1.0) * 0.5)  # [B, c, h, w] each
        dist = DiagonalGaussianDistribution(torch.cat([mean, logvar], dim=1).to(x.dtype))  # [B, 2c, h, w]
        return AutoencoderKLOutput(latent_dist=dist) if return_dict else (dist,)

    def decode(self, z: torch.Tensor, return_dict: bool = True,
               generator: torch.Generator | None = None) -> DecoderOutput | tuple:
        """Latents [B, c, h, w] in the FAE's scale -> ``DecoderOutput(sample=images)``, images in
        [-1, 1] (in ``z``'s dtype). ``generator`` is accepted for AutoencoderKL's signature; the
        decoder is deterministic. Autograd follows the caller's grad mode, as for any nn.Module."""
        with self._compute():
            images = self.fae.decode(z.float(), requires_grad=True) * 2.0 - 1.0  # [B, C, H, W]
        images = images.to(z.dtype)
        return DecoderOutput(sample=images) if return_dict else (images,)

    def forward(self, sample: torch.Tensor, sample_posterior: bool = False, return_dict: bool = True,
                generator: torch.Generator | None = None) -> DecoderOutput | tuple:
        """Encode, then decode the posterior mode (or a sample): AutoencoderKL's forward."""
        dist = self.encode(sample).latent_dist
        z = dist.sample(generator=generator) if sample_posterior else dist.mode()
        return self.decode(z, return_dict=return_dict)

    def _compute(self) -> contextlib.AbstractContextManager:
        """Autocast in the weights' dtype when the model was cast below float32 (the FAE feeds its
        layers float32 tensors); nothing otherwise."""
        dtype = self.fae.latent_mean.dtype
        if dtype == torch.float32:
            return contextlib.nullcontext()
        return torch.autocast(self.fae.latent_mean.device.type, dtype=dtype)


def pooled_scale_shift(mean: torch.Tensor, std: torch.Tensor) -> tuple[float, float]:
    """Per-channel latent mean / std [c] -> (shift, scale) of all entries together: shift = the
    overall mean, scale = 1 / the overall std (channels weighted equally, as they hold equally
    many entries)."""
    shift = mean.double().mean()
    variance = (std.double().square() + (mean.double() - shift).square()).mean()
    return float(shift), float(variance.clamp_min(1e-12).rsqrt())


def _latent_stats(fae: FAE, mean: Sequence[float] | None, std: Sequence[float] | None
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """The given per-channel statistics (both or neither), else the FAE's own, as float [c]."""
    c = fae.config.latent_channels
    if (mean is None) != (std is None):
        raise CheckpointError("pass latents_mean and latents_std together (or neither: the FAE's own)")
    if mean is None:
        return fae.latent_mean.detach().float().cpu(), fae.latent_std.detach().float().cpu()
    mean_t, std_t = torch.as_tensor(mean, dtype=torch.float32), torch.as_tensor(std, dtype=torch.float32)
    if mean_t.shape != (c,) or std_t.shape != (c,):
        raise CheckpointError(f"latents_mean / latents_std must hold {c} values (one per latent channel), "
                              f"got {list(mean_t.shape)} / {list(std_t.shape)}")
    return mean_t, std_t


def _as_list(values: torch.Tensor | Sequence[float] | None) -> list[float] | None:
    if values is None:
        return None
    return torch.as_tensor(values).detach().float().cpu().reshape(-1).tolist()


def _build_fae(export: dict[str, Any]) -> FAE:
    """An FAE with the recorded architecture (random weights, filled in by the loader)."""
    if not isinstance(export, dict) or "config" not in export:
        raise CheckpointError("AutoencoderFAE config 'fae_export' must hold the FAE export's 'config' section")
    fae = FAE(config_from_export(export["config"], prefix="fae_export.config"))
    if export.get("pixel_decoder"):
        fae.set_pixel_decoder(PixelDecoder.from_export_config(export["pixel_decoder"]))
    return fae


def _image_size(fae: FAE) -> int:
    """The decoded image size (the pixel decoder's), else the backbone's input resolution."""
    decoder = fae.pixel_decoder
    if decoder is None:
        return int(fae.config.resolution)
    return int(decoder.config.output_size or decoder.config.image_size)


def _is_diffusers_folder(folder: Path) -> bool:
    """True for a folder whose config.json diffusers wrote (it names the class), not an FAE export."""
    path = folder / CONFIG_FILE
    if not path.is_file():
        return False
    try:
        return "_class_name" in json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
