"""Sample, then decode: the one path from a trained generator to images.

``fae sample``, the generator stage's preview grid and the demo all go through
:class:`SampleDecoder`, so they draw the same image for the same (seed, index, label):

    noise(seed, index) --Generator.iter_samples--> z [b, c, h, w] (the FAE's scale)
        --decoder.decode--> float [b, C, H, W] in [0, 1] --fae.images.quantize--> uint8

The decoder is duck-typed (anything with ``decode(z) -> images in [0, 1]``, e.g. an FAE with a
pixel decoder): this package sees latents and never imports the autoencoder. A generator trained on
a backbone's raw tokens (``fae cache-latents backbone.name=...``) samples tokens as latents
[b, D, h, w], already un-standardised with the statistics its export records; :func:`token_decoder`
reshapes them to tokens [b, N, D] for a stage-Ib pixel decoder. The helpers beside it are the
choices every caller makes the same way: which sampler settings (:func:`sampler_config`), which
labels (:func:`class_list`, :func:`class_labels`), and whether the pair fits (:func:`check_pair`,
:func:`token_decoder`).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterator, Sequence

import torch
from torch import nn

from fae.backbones.token_space import TokenSpace
from fae.config import from_dict, to_dict
from fae.errors import ConfigError, LatentCacheError
from fae.generation.flow_config import FlowSamplerConfig
from fae.generation.samplers import SamplerConfig
from fae.generation.seeding import balanced_labels
from fae.images import quantize
from fae.progress import show_progress

UNCONDITIONAL = -1  # the label SampleBatch reports for samples of an unconditional generator


@dataclass
class SampleBatch:
    """Samples in index order.

    Attributes:
        images: uint8 [b, C, H, W] (C as the decoder makes it, e.g. 1 for Fashion-MNIST).
        labels: int64 [b]; -1 for an unconditional generator.
        latents: float32 [b, c, h, w] in the FAE's scale (what was decoded).
    """

    images: torch.Tensor
    labels: torch.Tensor
    latents: torch.Tensor

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    @staticmethod
    def cat(parts: Sequence["SampleBatch"]) -> "SampleBatch":
        """One batch holding ``parts`` in order (empty tensors when there are none)."""
        if not parts:
            return SampleBatch(torch.empty(0, 0, 0, 0, dtype=torch.uint8), torch.empty(0, dtype=torch.long),
                               torch.empty(0, 0, 0, 0))
        return SampleBatch(*(torch.cat([getattr(p, k) for p in parts]) for k in ("images", "labels", "latents")))


# ------------------------------------------------------------------------- settings and labels


def sampler_config(generator, overrides: dict[str, Any] | None = None):
    """The generator's stored sampler settings with ``overrides`` applied and validated, in the
    settings class of its kind (``SamplerConfig`` for diffusion, ``FlowSamplerConfig`` for the flow);
    an unknown key is a ConfigError naming ``sampling.<key>``."""
    schema = type(generator.sampling)
    return from_dict(schema, {**to_dict(generator.sampling), **(overrides or {})}, prefix="sampling")


def check_sampler_overrides(overrides: dict[str, Any], prefix: str = "sampling") -> None:
    """Check free-form sampler overrides when their config loads, before any model does: unknown
    keys, types and ranges are ConfigErrors naming ``<prefix>.<key>``. Every range check of the
    sampler settings reads one key, so checking on top of the defaults is exact. The generator's
    kind is not known yet: overrides valid for either kind pass (the diffusion sampler's error is
    reported); :func:`sampler_config` checks them against the loaded generator's kind."""
    try:
        from_dict(SamplerConfig, {**to_dict(SamplerConfig()), **overrides}, prefix=prefix)
    except ConfigError as diffusion_error:
        try:
            from_dict(FlowSamplerConfig, {**to_dict(FlowSamplerConfig()), **overrides}, prefix=prefix)
        except ConfigError:
            raise diffusion_error from None


def class_list(generator, classes: Sequence[int] | None = None) -> list[int] | None:
    """Classes to cycle through (default: all of the generator's); None for an unconditional one."""
    n = generator.config.num_classes
    if n == 0:
        if classes:
            raise ConfigError("this generator is unconditional: do not pass classes")
        return None
    classes = list(range(n)) if not classes else [int(c) for c in classes]
    bad = [c for c in classes if not 0 <= c < n]
    if bad:
        raise ConfigError(f"classes {bad} are outside the generator's [0, {n - 1}]")
    return classes


def class_labels(generator, indices: Sequence[int] | range, classes: Sequence[int] | None = None
                 ) -> torch.Tensor | None:
    """Label [len(indices)] of each sample index, ``classes[index % len(classes)]`` (equal counts
    per class when len(classes) divides N, the ADM convention); None when unconditional."""
    chosen = class_list(generator, classes)
    return None if chosen is None else balanced_labels(indices, chosen)


def decoder_folder(sampling, fae: str) -> str:
    """Which export decodes samples drawn with ``sampling``: a flow sampler's ``finetuned_decoder``
    (STARFlow's ``finetuned_vae``: a pixel decoder fine-tuned on noisy latents decodes the samples
    the score step was skipped for) when set, else ``fae``. Callers load it (this package never
    imports the autoencoder) and check it with :func:`check_pair`, like any FAE."""
    return getattr(sampling, "finetuned_decoder", None) or fae


def check_pair(generator, fae_identity: str, fae_latent_shape: Sequence[int],
               generator_name: str = "the generator", fae_name: str = "the FAE") -> None:
    """Refuse an FAE other than the one whose latents the generator was trained on.

    Args:
        generator: a :class:`fae.generation.Generator` (its ``fae_identity`` is the cache's record).
        fae_identity: the FAE's identity hash (``FAE.identity()`` or its export's ``identity``).
        fae_latent_shape: the FAE's (c, h, w).
        generator_name, fae_name: how errors name the two (e.g. their folders).
    """
    recorded = generator.fae_identity.get("identity")
    if recorded is not None and recorded != fae_identity:
        raise LatentCacheError(f"generator '{generator_name}' was trained on latents of another FAE "
                               f"(identity {recorded[:12]}...) than '{fae_name}' "
                               f"(identity {fae_identity[:12]}...)")
    if tuple(fae_latent_shape) != tuple(generator.config.latent_shape):
        raise LatentCacheError(f"FAE '{fae_name}' makes latents {list(fae_latent_shape)}, generator "
                               f"'{generator_name}' samples {list(generator.config.latent_shape)}")


def token_decoder(pixel_decoder: nn.Module, latent_shape: Sequence[int], latent_mean: torch.Tensor,
                  latent_std: torch.Tensor, latents_name: str = "the generator",
                  decoder_name: str = "the pixel decoder") -> TokenSpace:
    """The decoder of raw-token latents: [b, D, h, w] -> tokens [b, N, D] (row-major, N = h * w)
    -> ``pixel_decoder`` -> images in [0, 1], on the pixel decoder's device.

    Args:
        pixel_decoder: a stage-Ib ``PixelDecoder`` (``token_dim`` D, ``grid`` (h, w)).
        latent_shape: (D, h, w) of the latents to decode (a generator's ``config.latent_shape``,
            a raw-token cache's ``latent_shape``); another shape is a LatentCacheError naming both.
        latent_mean, latent_std: the per-channel statistics [D] the cache recorded (kept as the
            space's buffers; the latents arrive un-standardised, so decoding does not apply them).
        latents_name, decoder_name: how the error names the two (e.g. their folders).
    """
    painted = (int(pixel_decoder.token_dim), *(int(n) for n in pixel_decoder.grid))  # (D, h, w)
    if tuple(int(n) for n in latent_shape) != painted:
        raise LatentCacheError(f"pixel decoder '{decoder_name}' paints tokens of width {painted[0]} on a "
                               f"{painted[1]}x{painted[2]} grid (latents {list(painted)}), but '{latents_name}' "
                               f"makes latents {list(latent_shape)}; use the stage-Ib decoder of the backbone "
                               f"whose raw tokens it was trained on")
    space = TokenSpace(pixel_decoder.grid, pixel_decoder.token_dim, pixel_decoder)
    space.set_latent_stats(latent_mean.detach().cpu(), latent_std.detach().cpu())
    return space.to(next(pixel_decoder.parameters()).device)


# ------------------------------------------------------------------------------ sample + decode


def _device_of(decoder) -> torch.device:
    """Where the decoder's weights live (an FAE: its latent statistics' device)."""
    buffer = getattr(decoder, "latent_mean", None)
    if isinstance(buffer, torch.Tensor):
        return buffer.device
    return next(decoder.parameters()).device


class SampleDecoder:
    """Draw samples from ``generator`` and decode them with ``fae``, batch by batch.

    Sample i is a function of (seed, index, label) only (``Generator.iter_samples``), so the result
    does not depend on ``batch_size``, on which other indices are drawn, or on the number of ranks.

    Args:
        generator: a :class:`fae.generation.Generator`.
        fae: the decoder: ``decode(z [b, c, h, w]) -> float images [b, C, H, W] in [0, 1]`` (an FAE
            with a pixel decoder); check it is the generator's with :func:`check_pair`.
        sampling: sampler settings (default: the generator's stored ones).
        batch_size: samples per generator and decoder pass.
        device: where latents are decoded (default: the decoder's device).
    """

    def __init__(self, generator, fae, sampling: SamplerConfig | None = None, batch_size: int = 64,
                 device: torch.device | str | None = None):
        if batch_size < 1:
            raise ConfigError(f"sampling batch_size must be >= 1, got {batch_size}")
        self.generator, self.fae, self.batch_size = generator, fae, batch_size
        self.sampling = sampling if sampling is not None else generator.sampling
        self.sampling.validate()
        self.device = torch.device(device) if device is not None else _device_of(fae)

    def _labels(self, indices: list[int], labels: torch.Tensor | Sequence[int] | None) -> torch.Tensor | None:
        if labels is None:
            return class_labels(self.generator, indices)
        if self.generator.config.num_classes == 0:
            raise ConfigError("this generator is unconditional: do not pass labels")
        labels = torch.as_tensor(labels, dtype=torch.long)
        if labels.shape != (len(indices),):
            raise ConfigError(f"need one label per sample index: {len(indices)} indices, labels of shape "
                              f"{list(labels.shape)}")
        return labels

    @torch.no_grad()
    def batches(self, indices: Sequence[int] | range, labels: torch.Tensor | Sequence[int] | None = None,
                seed: int = 0, prompts: Sequence[str] | None = None) -> Iterator[SampleBatch]:
        """Yield :class:`SampleBatch` es of up to ``batch_size`` samples, in index order.

        Args:
            indices: sample indices (each seeds its own noise).
            labels: class of each sample [len(indices)]; default: cycle through every class
                (:func:`class_labels`); must be None for an unconditional generator.
            seed: base seed.
            prompts: one prompt per index, for a text-to-image generator (then labels are -1).
        """
        indices = [int(i) for i in indices]
        if prompts is not None:
            if labels is not None:
                raise ConfigError("pass prompts or labels, not both")
            latents = self.generator.iter_samples(indices, seed=seed, config=self.sampling,
                                                  batch_size=self.batch_size, prompts=list(prompts))
            for z in latents:
                yield self._decode(z, None)
            return
        labels = self._labels(indices, labels)
        latents = self.generator.iter_samples(indices, labels, seed=seed, config=self.sampling,
                                              batch_size=self.batch_size)
        for start, z in zip(range(0, len(indices), self.batch_size), latents):
            yield self._decode(z, None if labels is None else labels[start:start + len(z)])

    def _decode(self, z: torch.Tensor, labels: torch.Tensor | None) -> SampleBatch:
        images = quantize(self.fae.decode(z.to(self.device))).cpu()  # [b, C, H, W] uint8
        if labels is None:
            labels = torch.full((len(z),), UNCONDITIONAL, dtype=torch.long)
        return SampleBatch(images=images, labels=labels.cpu(), latents=z.float().cpu())

    def all(self, indices: Sequence[int] | range, labels: torch.Tensor | Sequence[int] | None = None,
            seed: int = 0, progress: bool = False, desc: str = "samples",
            prompts: Sequence[str] | None = None) -> SampleBatch:
        """Every sample of :meth:`batches` in one :class:`SampleBatch` (optional progress display)."""
        parts = []
        with show_progress(total=len(indices), desc=desc, unit="img", disable=not progress) as bar:
            for batch in self.batches(indices, labels, seed, prompts):
                parts.append(batch)
                bar.update(len(batch))
        return SampleBatch.cat(parts)
