"""``TextToImageGenerator``: a trained MMDiT (``fae.generation.mmdit``) ready to sample from
prompts, and its export.

Export folder (the generators' layout, ``fae.generation.generator``): ``config.json`` with
``format: fae-t2i-generator``, the resolved architecture (``model``), ``transport``, default
``sampling``, the FAE identity (``fae``) and the text encoder it was trained with (``text``: how to
load it, and its identity); ``model.safetensors`` with the EMA weights and the latent statistics.
The text encoder is loaded the first time prompts are encoded (or attached with
:meth:`TextToImageGenerator.attach_text_encoder`), so opening an export needs no text weights.
"""
from __future__ import annotations

from typing import Any, Iterator, Sequence

import torch

from fae.errors import ConfigError
from fae.generation.conditioning import TextCondition
from fae.generation.generator import Generator, LatentGenerator
from fae.generation.mmdit import MMDiT
from fae.generation.mmdit_config import MMDiTConfig
from fae.generation.samplers import SamplerConfig
from fae.generation.transport import TransportConfig
from fae.text import load_text_encoder


class TextToImageGenerator(Generator):
    """MMDiT + transport + latent statistics + the record of its frozen text encoder.

    Args:
        model_config: architecture of the MMDiT.
        transport: the transport it was trained with.
        latent_mean, latent_std: per-channel statistics [c] of the training latents.
        sampling: default sampler settings (CFG scale / interval / schedule act on the text).
        fae_identity: the manifest entry of the FAE whose latents this models.
        text: ``{"encoder", "weights", "max_length", "identity"}`` of the text encoder
            (``fae.text.TextEncoderConfig.record()`` plus the encoder's identity).
        network: an existing network to wrap (the EMA model in training).
    """

    export_format = "fae-t2i-generator"
    export_label = "text-to-image generator"
    model_config_class = MMDiTConfig
    extra_sections = ("text",)  # from_export (Generator's) passes text=config["text"]

    def __init__(self, model_config: MMDiTConfig, transport: TransportConfig | None = None,
                 latent_mean: torch.Tensor | None = None, latent_std: torch.Tensor | None = None,
                 sampling: SamplerConfig | None = None, fae_identity: dict[str, Any] | None = None,
                 text: dict[str, Any] | None = None, network: MMDiT | None = None):
        LatentGenerator.__init__(self, network if network is not None else MMDiT(model_config),
                                 latent_mean, latent_std, sampling or SamplerConfig(), fae_identity)
        self.transport = transport or TransportConfig()
        self.text = dict(text or {})
        self._text_encoder = None

    # ---- prompts ------------------------------------------------------------------------------------

    def attach_text_encoder(self, encoder) -> None:
        """Use ``encoder`` (a ``fae.text.TextEncoder``) for prompts; its widths must fit."""
        cfg = self.config
        if (encoder.dim, encoder.pooled_dim) != (cfg.text_dim, cfg.pooled_dim):
            raise ConfigError(f"text encoder '{encoder.info.name}' gives width {encoder.dim} (pooled "
                              f"{encoder.pooled_dim}); this generator was trained on {cfg.text_dim} "
                              f"(pooled {cfg.pooled_dim}) from '{self.text.get('encoder')}'")
        self._text_encoder = encoder

    @property
    def text_encoder(self):
        """The frozen text encoder named in the export (loaded on first use)."""
        if self._text_encoder is None:
            if not self.text.get("encoder"):
                raise ConfigError("this generator records no text encoder: attach one with attach_text_encoder")
            self.attach_text_encoder(load_text_encoder(self.text["encoder"], self.text.get("weights"),
                                                       self.text.get("max_length"), device=self.latent_mean.device))
        return self._text_encoder

    def encode_prompts(self, prompts: Sequence[str]) -> TextCondition:
        """Prompts -> the :class:`TextCondition` the network takes (on the generator's device)."""
        return TextCondition(*self.text_encoder.encode(list(prompts))).to(self.latent_mean.device)

    @torch.no_grad()
    def sample(self, indices: Sequence[int] | range | None = None, labels: torch.Tensor | None = None,
               seed: int = 0, config: SamplerConfig | None = None, batch_size: int = 64,
               prompts: Sequence[str] | None = None) -> torch.Tensor:
        """Latents [N, c, h, w] in the FAE's scale for ``prompts`` (one each); sample i is a function
        of (seed, indices[i], prompts[i]) only. ``indices`` default to 0..N-1."""
        return torch.cat(list(self.iter_samples(indices, labels, seed, config, batch_size, prompts)))

    @torch.no_grad()
    def iter_samples(self, indices: Sequence[int] | range | None = None, labels: torch.Tensor | None = None,
                     seed: int = 0, config: SamplerConfig | None = None, batch_size: int = 64,
                     prompts: Sequence[str] | None = None) -> Iterator[torch.Tensor]:
        """Yield batches of latents (see :meth:`sample`)."""
        if labels is not None:
            raise ConfigError("a text-to-image generator takes prompts, not class labels")
        if prompts is None or isinstance(prompts, str):
            raise ConfigError("a text-to-image generator needs prompts=[...] (a list, one per sample)")
        indices = list(range(len(prompts))) if indices is None else list(indices)
        if len(indices) != len(prompts):
            raise ConfigError(f"need one prompt per sample index: {len(indices)} indices, {len(prompts)} prompts")
        config = config or self.sampling
        for start in range(0, len(indices), batch_size):
            batch = indices[start:start + batch_size]
            yield self._sample_batch(batch, self.encode_prompts(prompts[start:start + len(batch)]), seed, config)

    # ---- export ---------------------------------------------------------------------------------

    def export_config(self) -> dict[str, Any]:
        return {**super().export_config(), "text": self.text}

