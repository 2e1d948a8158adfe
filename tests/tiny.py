"""Tiny models of the test suite, built one way everywhere.

Every builder returns a fresh, seeded object (the same seed gives the same weights), so a test may
train or edit what it gets. A read-only export of the tiny FAE is a session fixture in
``tests/conftest.py`` (``tiny_fae_export``). ``TINY_EXPORTS`` names a tiny builder for every ``Exportable`` class; the
round-trip tester (``tests/test_exportables.py``) fails for a class missing from it.

Shapes: tiny-vit at 32 px gives 4x4 tokens of width 64; the FAE's latent is [4, 4, 4]; every
generator models latents [4, 4, 4].
"""
from __future__ import annotations

from typing import Any, Callable

import torch
from torch import nn

from fae.autoencoder import FAE, FAEConfig
from fae.autoencoder.pixel_autoencoder import PixelAutoencoder, PixelAutoencoderConfig
from fae.autoencoder.pixel_decoder import PixelDecoder, PixelDecoderConfig
from fae.backbones import load_backbone
from fae.backbones.base import Backbone
from fae.config import from_dict
from fae.export import Exportable
from fae.generation import Generator, GeneratorConfig, MMDiTConfig, TextToImageGenerator
from fae.generation.flow_config import FlowConfig, FlowSamplerConfig
from fae.generation.flow_generator import FlowGenerator
from fae.generation.samplers import SamplerConfig
from fae.generation.transport import TransportConfig

BACKBONE = "tiny-vit"
TOKEN_DIM, GRID = 64, (4, 4)  # tiny-vit at its default 32 px
TINY_FAE: dict[str, Any] = {"backbone": BACKBONE, "latent_channels": 4, "encoder": {"heads": 2, "head_dim": 16},
                            "decoder": {"depth": 1, "width": 32, "heads": 2}}
TINY_PIXEL_DECODER: dict[str, Any] = {"depth": 1, "dim": 32, "heads": 2, "out_channels": 1, "image_size": 28}
TINY_GENERATOR: dict[str, Any] = {"depth": 1, "dim": 32, "heads": 2, "latent_channels": 4, "latent_size": 4}
TINY_MMDIT: dict[str, Any] = {"depth": 1, "dim": 32, "heads": 2, "latent_channels": 4, "latent_size": 4,
                              "text_dim": 12, "pooled_dim": 6}
TINY_FLOW: dict[str, Any] = {"deep_layers": 1, "shallow_blocks": 1, "shallow_layers": 1, "dim": 32, "head_dim": 8,
                             "latent_channels": 4, "latent_size": 4, "num_classes": 3}
GENERATOR_KINDS = ("diffusion", "flow", "mmdit")


def tiny_backbone() -> Backbone:
    """tiny-vit at 32 px: a seeded random ViT, tokens [B, 16, 64]."""
    return load_backbone(BACKBONE)


def tiny_fae(seed: int = 0, encoder: dict[str, Any] | None = None, **overrides) -> FAE:
    """The tiny FAE (train mode); ``encoder`` entries update the encoder section, ``overrides``
    the top-level keys of ``FAEConfig``."""
    config = {**TINY_FAE, "encoder": {**TINY_FAE["encoder"], **(encoder or {})}, **overrides}
    torch.manual_seed(seed)
    return FAE(from_dict(FAEConfig, config))


def fae_on(info, seed: int = 0) -> FAE:
    """A small FAE (width-32 tokens, 4 latent channels) for the backbone ``info`` describes (e.g. a
    tiny SigLIP saved by a test)."""
    torch.manual_seed(seed)
    return FAE(from_dict(FAEConfig, {"backbone": info.name, "resolution": info.resolution, "token_dim": 32,
                                     "grid": list(info.grid), "latent_channels": 4,
                                     "encoder": {"heads": 2, "head_dim": 16},
                                     "decoder": {"depth": 1, "width": 32, "heads": 2}}))


def save_tiny_siglip(folder, vocab_size: int, text_positions: int) -> nn.Module:
    """A tiny random full SigLIP (vision tower with its MAP head at 16 px, patch 4, + text tower;
    width 32, one layer each) saved to ``folder`` in the Hugging Face format; returns it (eval)."""
    import transformers as tf  # only the tests that build Hugging Face models need it

    torch.manual_seed(0)
    text = dict(vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                num_attention_heads=2, max_position_embeddings=text_positions)
    vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                  image_size=16, patch_size=4)
    full = tf.SiglipModel(tf.SiglipConfig(text_config=text, vision_config=vision)).eval()
    full.save_pretrained(folder)
    return full


def tiny_pixel_decoder(seed: int = 0, **overrides) -> PixelDecoder:
    """A one-block pixel decoder for tiny-vit tokens -> 1 x 28 x 28 images."""
    torch.manual_seed(seed)
    return PixelDecoder(PixelDecoderConfig(**{**TINY_PIXEL_DECODER, **overrides}), token_dim=TOKEN_DIM, grid=GRID)


def tiny_fae_with_pixel_decoder(seed: int = 0) -> FAE:
    """The tiny FAE carrying a pixel decoder and unit latent statistics: a complete image
    autoencoder export (what ``fae sample`` / ``fae eval`` read)."""
    fae = tiny_fae(seed)
    fae.set_pixel_decoder(PixelDecoder(PixelDecoderConfig(**TINY_PIXEL_DECODER), token_dim=TOKEN_DIM, grid=GRID))
    fae.set_latent_stats(torch.zeros(4), torch.ones(4))
    return fae


def tiny_pixel_autoencoder(seed: int = 0) -> PixelAutoencoder:
    """The pixel VAE of the latent-space experiment: 1 x 28 x 28 images <-> latents [4, 4, 4]."""
    torch.manual_seed(seed)
    return PixelAutoencoder(PixelAutoencoderConfig(latent_channels=4, grid=GRID, width=16))


def tiny_generator(kind: str = "diffusion", seed: int = 0):
    """A generator of one kind (``GENERATOR_KINDS``) over latents [4, 4, 4], with 2-step default
    sampling: a class-conditional SiT (3 classes), a STARFlow (3 classes) or a text MMDiT."""
    torch.manual_seed(seed)
    if kind == "diffusion":
        return Generator(GeneratorConfig(**TINY_GENERATOR, num_classes=3), TransportConfig(shift=0.4),
                         sampling=SamplerConfig(method="euler", steps=2))
    if kind == "flow":
        return FlowGenerator(FlowConfig(**TINY_FLOW), sampling=FlowSamplerConfig())
    if kind == "mmdit":
        return TextToImageGenerator(MMDiTConfig(**TINY_MMDIT), sampling=SamplerConfig(method="euler", steps=2))
    raise ValueError(f"unknown generator kind {kind!r}; one of {GENERATOR_KINDS}")


def perturbed(module: nn.Module, seed: int = 0, std: float = 0.05) -> nn.Module:
    """Add seeded noise to every floating tensor of the state dict (parameters and saved buffers):
    zero-initialised layers (adaLN-Zero, a fresh flow's identity map) then carry signal, so a
    tensor lost on the way to disk shows. Unsaved buffers (RoPE tables) are left alone."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for tensor in module.state_dict().values():  # views of the module's own storage
            if tensor.is_floating_point():
                tensor.add_(torch.randn(tensor.shape, generator=g, dtype=tensor.dtype) * std)
    return module


# Exportable class -> its tiny instance (the round-trip tester covers every class named here).
TINY_EXPORTS: dict[type[Exportable], Callable[[], Exportable]] = {
    FAE: tiny_fae_with_pixel_decoder,
    PixelDecoder: tiny_pixel_decoder,
    PixelAutoencoder: tiny_pixel_autoencoder,
    Generator: lambda: tiny_generator("diffusion"),
    FlowGenerator: lambda: tiny_generator("flow"),
    TextToImageGenerator: lambda: tiny_generator("mmdit"),
}
