"""Hugging Face ``transformers`` vision towers: DINOv2 (+registers), SigLIP, SigLIP2 NaFlex.

``backbone(images)`` returns patch tokens only, in row-major grid order:
- DINOv2: ``last_hidden_state`` (after the final LayerNorm) minus the CLS token and, for the
  register variants, the register tokens -> ``[B, (S/14)^2, D]`` (16x16 at 224 px); the CLS and
  register tokens it drops come back beside the patches from ``forward_all`` (a
  :class:`fae.backbones.base.BackboneOutput`) - the sequence is [CLS, registers..., patches...];
- SigLIP: ``last_hidden_state`` (after ``post_layernorm``; SigLIP has no CLS token);
- SigLIP2 NaFlex: the model takes flattened patches ``[B, N, p*p*3]`` + ``pixel_attention_mask``
  + ``spatial_shapes``; we run it at a fixed square size so no patch is padding.

SigLIP / SigLIP2 towers keep their attention-pooling (MAP) head: :meth:`HFBackbone.attention_pool`
maps pre-head tokens ``[B, N, D]`` (``last_hidden_state``, after ``post_layernorm``: what
``backbone(images)`` returns) to the image embedding ``[B, D]`` that SigLIP compares with its text
tower's (``pooler_output`` of the vision model) - applied to FAE-reconstructed tokens for
text-image retrieval (``fae.evaluation.retrieval``).

Width and grid come from the loaded config; under a registry name they must agree with the entry
("weights of the wrong shape" otherwise). Missing folders and unreachable hub ids raise
:class:`fae.errors.WeightsNotFoundError` saying how to supply weights.
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import torch

from fae.backbones.base import Backbone, BackboneInfo, BackboneOutput
from fae.backbones.weights import (RANDOM_SEED, WeightsSource, how_to_supply, hub_offline, hub_reachable,
                                   resolve_weights)
from fae.errors import ConfigError, WeightsNotFoundError

# config.model_type -> (family, transformers class name)
MODEL_TYPES = {
    "dinov2": ("dinov2", "Dinov2Model"),
    "dinov2_with_registers": ("dinov2", "Dinov2WithRegistersModel"),
    "siglip": ("siglip", "SiglipVisionModel"),
    "siglip_vision_model": ("siglip", "SiglipVisionModel"),
    "siglip2": ("siglip2", "Siglip2VisionModel"),
    "siglip2_vision_model": ("siglip2", "Siglip2VisionModel"),
}
FAMILY_OF_GENERIC = {"dinov2": "dinov2", "dinov2-reg": "dinov2", "siglip": "siglip", "siglip2": "siglip2"}
# Registry name -> the architecture of its published checkpoint (the config.json fields that set the
# shapes), so ``weights="random"`` can build it without the hub: fae plan, rehearsals, benchmarks.
_DINOV2 = {"s": (384, 12, 6), "b": (768, 12, 12), "l": (1024, 24, 16), "g": (1536, 40, 24)}
_SIGLIP = {"base": (768, 3072, 12, 12), "large": (1024, 4096, 24, 16), "so400m": (1152, 4304, 27, 16),
           "g-opt": (1536, 6144, 40, 16)}  # width, MLP width, layers, heads


def architecture(info: BackboneInfo) -> tuple[str, dict]:
    """(transformers class name, config fields) of a registry entry's published checkpoint."""
    if info.family == "dinov2":
        size = info.name.split("-")[1][0]  # dinov2-g14[-reg] -> g
        dim, layers, heads = _DINOV2[size]
        fields = dict(hidden_size=dim, num_hidden_layers=layers, num_attention_heads=heads, mlp_ratio=4,
                      use_swiglu_ffn=size == "g", image_size=518, patch_size=info.patch_size,
                      layerscale_value=1.0)
        if info.name.endswith("-reg"):
            fields["num_register_tokens"] = 4
        return _registry_class(info), fields
    size = next(key for key in _SIGLIP if f"-{key}" in info.name)
    dim, mlp, layers, heads = _SIGLIP[size]
    fields = dict(hidden_size=dim, intermediate_size=mlp, num_hidden_layers=layers, num_attention_heads=heads,
                  patch_size=info.patch_size)
    if info.family == "siglip2":
        fields["num_patches"] = info.grid[0] * info.grid[1]
    else:
        fields["image_size"] = info.resolution
    return _registry_class(info), fields


NORMALISATION = {"dinov2": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225), "bicubic"),
                 "siglip": ((0.5,) * 3, (0.5,) * 3, "bicubic"),
                 "siglip2": ((0.5,) * 3, (0.5,) * 3, "bilinear")}


def _read_model_type(source: WeightsSource, name: str) -> str:
    """``model_type`` from a local folder's config.json (hub ids: from the registry entry)."""
    path = Path(source.location) / "config.json"
    if not path.is_file():
        raise WeightsNotFoundError(f"weights for '{name}': '{source.location}' is not a Hugging Face "
                                   f"model folder (no config.json). " + how_to_supply(name))
    try:
        return json.loads(path.read_text())["model_type"]
    except (ValueError, KeyError) as e:
        raise WeightsNotFoundError(f"weights for '{name}': cannot read model_type from '{path}': {e}") from None


def _from_pretrained(class_name: str, source: WeightsSource, name: str) -> torch.nn.Module:
    """Load ``transformers.<class_name>``; every failure becomes a WeightsNotFoundError."""
    import transformers
    cls = getattr(transformers, class_name)
    if source.local:
        return _call(cls, source.location, name, local_files_only=True)
    try:  # the HF cache first: works offline, no network round trip
        return cls.from_pretrained(source.location, local_files_only=True)
    except Exception:  # noqa: BLE001 - not cached (or broken cache); try the hub below
        pass
    if hub_offline() or not hub_reachable():
        why = "HF_HUB_OFFLINE is set" if hub_offline() else "the Hugging Face hub is unreachable"
        raise WeightsNotFoundError(f"weights for '{name}': hub id '{source.location}' is not in the "
                                   f"local cache and {why}. " + how_to_supply(name))
    return _call(cls, source.location, name, local_files_only=False)


load_hf_model = _from_pretrained  # the public name (the text encoders load their towers with it)


def check_hf_weights(source: WeightsSource, name: str) -> str:
    """Where :func:`_from_pretrained` would read ``source`` from, checked without loading: a local
    Hugging Face folder (with its config.json), a hub id in the local cache, or a hub id to
    download (only when the hub can be reached). Returns that place in words; a
    WeightsNotFoundError saying how to supply the weights otherwise."""
    if source.local:
        if Path(source.location).is_dir():
            _read_model_type(source, name)  # a folder without config.json is refused by name
        return source.location
    # lazy: huggingface_hub is only needed once a hub id is asked for (transformers brings it)
    from huggingface_hub import try_to_load_from_cache

    if isinstance(try_to_load_from_cache(source.location, "config.json"), str):
        return f"hub id {source.location} (in the local Hugging Face cache)"
    if hub_offline() or not hub_reachable():
        why = "HF_HUB_OFFLINE is set" if hub_offline() else "the Hugging Face hub is unreachable"
        raise WeightsNotFoundError(f"weights for '{name}': hub id '{source.location}' is not in the "
                                   f"local cache and {why}. " + how_to_supply(name))
    return f"hub id {source.location} (not cached: downloaded when the backbone is first loaded)"


def _call(cls, location: str, name: str, local_files_only: bool) -> torch.nn.Module:
    try:
        return cls.from_pretrained(location, local_files_only=local_files_only)
    except Exception as e:  # noqa: BLE001 - OSError, ValueError, shape errors inside transformers
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise WeightsNotFoundError(f"cannot load weights for '{name}' from '{location}' "
                                   f"({type(e).__name__}: {first}). " + how_to_supply(name)) from None


def _local_config(class_name: str, source: WeightsSource, name: str):
    """The vision config of a local folder (a full SigLIP folder yields its ``vision_config``)."""
    import transformers
    config_class = getattr(transformers, class_name).config_class
    try:
        return config_class.from_pretrained(source.location, local_files_only=True)
    except Exception as e:  # noqa: BLE001 - malformed config.json
        raise WeightsNotFoundError(f"cannot read the config of '{source.location}' for '{name}': {e}") from None


def _patch_size(config) -> int:
    p = config.patch_size
    return int(p[0] if isinstance(p, (tuple, list)) else p)


def _config_resolution(config) -> int:
    size = getattr(config, "image_size", None)
    if size is None:  # SigLIP2 NaFlex: a patch budget instead of a size
        return int(round(config.num_patches ** 0.5)) * _patch_size(config)
    return int(size[0] if isinstance(size, (tuple, list)) else size)


def _check_shape(info: BackboneInfo, config, location: str) -> None:
    """A folder loaded under a registry name must have that entry's width and patch size."""
    dim, patch = int(config.hidden_size), _patch_size(config)
    if dim != info.dim or patch != info.patch_size:
        raise WeightsNotFoundError(
            f"weights of the wrong shape for '{info.name}': '{location}' has token width {dim} and "
            f"patch {patch}, the registry entry expects width {info.dim} and patch {info.patch_size}. "
            f"Point backbone.weights= at the right model, or load any folder with the generic "
            f"name: backbone.name=hf backbone.weights=<folder>.")


class HFBackbone(Backbone):
    """A frozen ``transformers`` vision tower returning patch tokens.

    Args:
        info: name, width, grid, resolution and normalisation (from the registry or the config).
        model: the loaded ``Dinov2Model`` / ``Dinov2WithRegistersModel`` / ``SiglipVisionModel`` /
            ``Siglip2VisionModel``.
    """

    def __init__(self, info: BackboneInfo, model: torch.nn.Module):
        super().__init__()
        self.model = model
        self.prefix_tokens = 0  # CLS + registers at the front of DINOv2's sequence
        if info.family == "dinov2":
            self.prefix_tokens = 1 + int(getattr(model.config, "num_register_tokens", 0) or 0)
        self.info = dataclasses.replace(info, prefix_tokens=self.prefix_tokens)  # what the weights have
        self.freeze()

    @classmethod
    def from_registry(cls, info: BackboneInfo, source: WeightsSource) -> "HFBackbone":
        class_name = None
        if source.local:
            model_type = _read_model_type(source, info.name)
            family, class_name = _family_of(model_type, info.name, source)
            if family != info.family or class_name != _registry_class(info):
                raise WeightsNotFoundError(f"weights of the wrong kind for '{info.name}': "
                                           f"'{source.location}' holds a '{model_type}' model, expected "
                                           f"{_registry_class(info)}. " + how_to_supply(info.name))
        class_name = class_name or _registry_class(info)
        if source.local:  # reject a wrong-width folder before reading (possibly GBs of) weights
            _check_shape(info, _local_config(class_name, source, info.name), source.location)
        model = _from_pretrained(class_name, source, info.name)
        _check_shape(info, model.config, source.location)
        return cls(info, model)

    @classmethod
    def random(cls, info: BackboneInfo, layers: int | None = None) -> "HFBackbone":
        """The entry's published architecture with random weights seeded by ``RANDOM_SEED`` (the
        same network in every process; built on the current default device: under
        ``torch.device("meta")`` nothing is allocated), cut to its first ``layers`` blocks when
        given (``weights="random:N"``). Costs, never results."""
        import transformers

        class_name, fields = architecture(info)
        if layers is not None:
            fields["num_hidden_layers"] = min(layers, fields["num_hidden_layers"])
        model_class = getattr(transformers, class_name)
        with torch.random.fork_rng(devices=range(torch.cuda.device_count())):  # caller RNG untouched
            torch.manual_seed(RANDOM_SEED)
            model = model_class(model_class.config_class(**fields))
        return cls(info, model)

    def forward_features(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.forward_tokens(pixels).patches  # [B, N, D]

    def forward_tokens(self, pixels: torch.Tensor) -> BackboneOutput:
        if self.info.family == "siglip2":
            return BackboneOutput(self._siglip2_tokens(pixels))
        if self.info.family == "siglip":
            native = _config_resolution(self.model.config)
            out = self.model(pixel_values=pixels, interpolate_pos_encoding=pixels.shape[-1] != native)
            return BackboneOutput(out.last_hidden_state)  # [B, N, D] (SigLIP has no CLS token)
        out = self.model(pixel_values=pixels)  # DINOv2 interpolates its position embeddings itself
        seq = out.last_hidden_state  # [B, 1 + R + N, D]: CLS, registers, patches
        p = self.prefix_tokens
        return BackboneOutput(seq[:, p:], seq[:, 0], seq[:, 1:p] if p > 1 else None)

    @property
    def has_attention_pool(self) -> bool:
        """True for SigLIP / SigLIP2 towers saved with their MAP head (``vision_use_head``)."""
        return self._pool_head() is not None

    def _pool_head(self):
        if self.info.family not in ("siglip", "siglip2"):
            return None
        model = getattr(self.model, "vision_model", self.model)  # older transformers nest the tower
        return getattr(model, "head", None) if getattr(model, "use_head", True) else None

    def attention_pool(self, tokens: torch.Tensor) -> torch.Tensor:
        """Pre-head tokens [B, N, D] (raw or FAE-reconstructed) -> SigLIP image embedding [B, D]
        through the tower's own multihead-attention-pooling head (no padding mask: every token
        is a real patch here)."""
        head = self._pool_head()
        if head is None:
            raise ConfigError(f"backbone '{self.info.name}' has no attention-pooling head: only "
                              f"SigLIP / SigLIP2 vision towers saved with vision_use_head=true have one")
        if tokens.ndim != 3 or tokens.shape[-1] != self.info.dim:
            raise ConfigError(f"attention_pool takes tokens [B, N, {self.info.dim}], got {list(tokens.shape)}")
        with torch.no_grad():
            return head(tokens.to(self.device, self.compute_dtype)).float()  # [B, D]

    def _siglip2_tokens(self, pixels: torch.Tensor) -> torch.Tensor:
        p = self.info.patch_size
        B, C, H, W = pixels.shape
        h, w = H // p, W // p
        # [B, C, h, p, w, p] -> [B, h, w, p, p, C] -> [B, h*w, p*p*C]: the NaFlex processor's order
        patches = pixels[..., :h * p, :w * p].reshape(B, C, h, p, w, p).permute(0, 2, 4, 3, 5, 1)
        patches = patches.reshape(B, h * w, p * p * C)
        mask = torch.ones(B, h * w, dtype=torch.long, device=pixels.device)  # no padding patches
        shapes = torch.tensor([[h, w]] * B, dtype=torch.long, device=pixels.device)
        out = self.model(pixel_values=patches, pixel_attention_mask=mask, spatial_shapes=shapes)
        return out.last_hidden_state  # [B, h*w, D]


def _family_of(model_type: str, name: str, source: WeightsSource) -> tuple[str, str]:
    if model_type not in MODEL_TYPES:
        raise WeightsNotFoundError(f"weights for '{name}': '{source.location}' holds a '{model_type}' "
                                   f"model; supported: {', '.join(sorted(MODEL_TYPES))}")
    return MODEL_TYPES[model_type]


def _registry_class(info: BackboneInfo) -> str:
    if info.family == "dinov2":
        return "Dinov2WithRegistersModel" if info.name.endswith("-reg") else "Dinov2Model"
    return "Siglip2VisionModel" if info.family == "siglip2" else "SiglipVisionModel"


def load_generic_hf(name: str, weights: str | None, resolution: int | None) -> HFBackbone:
    """Any supported HF vision model from a folder; width/grid/resolution from its config.

    ``resolution`` defaults to the config's ``image_size`` (NaFlex: sqrt(num_patches) * patch).
    """
    if weights is None:
        raise ConfigError(f"backbone '{name}' is generic: set backbone.weights=<Hugging Face model folder>")
    source = resolve_weights(name, weights, None)
    if not source.local:
        raise WeightsNotFoundError(f"backbone '{name}' loads local folders only; '{weights}' is not one")
    model_type = _read_model_type(source, name)
    family, class_name = _family_of(model_type, name, source)
    wanted = FAMILY_OF_GENERIC.get(name)
    if wanted is not None and (wanted != family or (name == "dinov2-reg") != (model_type == "dinov2_with_registers")):
        raise WeightsNotFoundError(f"weights of the wrong kind for '{name}': '{source.location}' holds "
                                   f"a '{model_type}' model; use the name 'hf' to load any kind")
    model = _from_pretrained(class_name, source, name)
    return HFBackbone(_info_from_config(name, family, model.config, source, resolution), model)


def _info_from_config(name: str, family: str, config, source: WeightsSource,
                      resolution: int | None) -> BackboneInfo:
    patch = _patch_size(config)
    res = resolution or _config_resolution(config)
    if res < patch:
        raise ConfigError(f"backbone '{name}': resolution {res} is smaller than its patch size {patch}")
    mean, std, mode = NORMALISATION[family]
    prefix = 1 + int(getattr(config, "num_register_tokens", 0) or 0) if family == "dinov2" else 0
    return BackboneInfo(name=f"{name}:{Path(source.location).name}", dim=int(config.hidden_size),
                        grid=(res // patch, res // patch), resolution=res, mean=mean, std=std,
                        source=source.location, description=f"{family} from a local folder",
                        family=family, patch_size=patch, interpolation=mode, prefix_tokens=prefix)

