"""Latent cache: a dataset encoded once by a trained FAE, for generator training. This module holds
what a cache is made from (:class:`CacheConfig`, the FAE export's record) and how it is read
(manifest, :class:`LatentCache`, the datasets); :mod:`fae.data.latent_cache_writer` writes it.

Folder layout (a :mod:`fae.data.shard_store`, written by :mod:`fae.data.latent_cache_writer`):

    manifest.json              format, the FAE's identity (hash of the tensors that define its latent
                               space), backbone, resolution, latent shape, the FAE's per-channel
                               ``latent_stats`` (copied from its export), dataset, item count, shard
                               plan, and ``complete`` once every shard is checked
    shard-00000.safetensors    ``latents`` [n, c, h, w] (posterior means), ``labels`` [n] int64, and
                               ``latents_flipped`` [n, c, h, w] when flipped copies were requested;
                               for a captioned dataset the captions (JSON list in the shard's
                               metadata) and, with a text encoder, ``text_tokens`` [n, L, D],
                               ``text_mask`` [n, L] bool and ``text_pooled`` [n, Dp]

Captions and text embeddings (text-to-image): the manifest records the text encoder whose embeddings
the shards hold (``text_encoder``: name, source, max_length, widths), so a generator trained with
another encoder is refused (:meth:`LatentCache.check_text_encoder`).

Latent statistics have one source: the FAE export (stage Ia measures them; ``FAE.latent_mean`` /
``latent_std``). The cache records those numbers and never measures its own, so the generator, the
cache and the FAE normalise latents identically. Caches of manifest version 1 measured their own
statistics (``"stats"`` in the manifest and a ``stats.safetensors``); they still load and keep them.

Shard ``i`` holds dataset items ``[i * shard_size, (i + 1) * shard_size)``. Neither module imports
the autoencoder: the reader reads JSON and safetensors, the writer takes any encoder.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from safetensors.torch import load_file
from torch.utils.data import Dataset

from fae.data.datasets import DataConfig
from fae.data.shard_store import MANIFEST, ShardStore
from fae.errors import ConfigError, LatentCacheError
from fae.export import CONFIG_FILE, read_export_config, resolve_folder

FORMAT, VERSION = "fae-latent-cache", 2  # version 1: the cache measured its own statistics
LEGACY_STATS = "stats.safetensors"


@dataclass
class CacheConfig:
    """``fae cache-latents`` settings.

    Args:
        fae: folder of the exported FAE (``fae train autoencoder``) that encodes the images.
        out: cache folder to write (or resume).
        data: the images to encode (its random ``flip`` is ignored: see ``flip``).
        flip: also store the latents of horizontally flipped images (training augmentation).
        batch_size: images per encoder pass on each rank.
        shard_size: items per shard file.
        dtype: storage dtype of the latents.
        num_workers: DataLoader workers per rank.
        progress: show a progress bar on rank 0.
        token_cache_dir: encode from the backbone tokens kept in this token cache
            (``fae.backbones.token_cache``; computed there when missing) instead of running the
            backbone again; the stages' ``token_cache_dir``. Needs ``flip: false``.
        text_encoder: for captioned data, also store this text encoder's embeddings of the captions
            (a ``fae.text`` registry name, e.g. ``t5-v1_1-xl``); null stores the captions only (a
            generator then encodes them online: ``text.embeddings: online``).
        text_weights, text_max_length: its weights location and tokens per caption (null = registry).
    """

    fae: str = ""
    out: str = "runs/latents"
    data: DataConfig = field(default_factory=DataConfig)
    flip: bool = False
    batch_size: int = 64
    shard_size: int = 4096
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    num_workers: int = 0
    progress: bool = True
    token_cache_dir: str | None = None
    text_encoder: str | None = None
    text_weights: str | None = None
    text_max_length: int | None = None

    def validate(self) -> None:
        if self.token_cache_dir and self.flip:
            raise ConfigError("config key 'flip' must be false with token_cache_dir: cached tokens are "
                              "of the unflipped images")
        if not self.fae:
            raise ConfigError("config key 'fae' is required: the folder of an exported FAE")
        for key in ("batch_size", "shard_size"):
            if getattr(self, key) < 1:
                raise ConfigError(f"config key '{key}' must be >= 1, got {getattr(self, key)}")


def cache_store(folder: str | Path) -> ShardStore:
    """The shard store of the latent cache in ``folder`` (its errors name `fae cache-latents`)."""
    return ShardStore(Path(folder), "latent cache", LatentCacheError,
                      rewrite="re-run `fae cache-latents` to write it again",
                      rebuild="re-run `fae cache-latents` into a new folder")


# ------------------------------------------------------------------------------ the FAE's export


def read_fae_export(folder: str | Path) -> dict[str, Any]:
    """What a cache needs from an FAE export's ``config.json`` (no weights are read):
    ``identity``, ``latent_shape`` (c, h, w) and, when recorded, ``latent_stats``.

    Exports written before ``latent_shape`` was recorded give it as ``config.latent_channels``
    and ``backbone.grid``; both spellings are read.
    """
    config = read_export_config(folder)
    path = resolve_folder(folder) / CONFIG_FILE
    if not isinstance(config.get("identity"), str):
        raise LatentCacheError(f"'{folder}' holds a '{config['format']}' export, not an exported FAE "
                               f"(no identity in '{path}')")
    return {"identity": config["identity"], "latent_shape": _latent_shape(config, path),
            "latent_stats": config.get("latent_stats")}


def _latent_shape(config: dict[str, Any], path: Path) -> tuple[int, int, int]:
    if "latent_shape" in config:
        return tuple(int(v) for v in config["latent_shape"])
    model, backbone = config.get("config") or {}, config.get("backbone") or {}
    grid = backbone.get("grid") or model.get("grid")
    if "latent_channels" not in model or not grid:
        raise LatentCacheError(f"'{path}' records no latent shape (neither 'latent_shape' nor "
                               f"'config.latent_channels' with 'backbone.grid')")
    return int(model["latent_channels"]), int(grid[0]), int(grid[1])


def mismatch_message(cache: str | Path, cache_id: dict[str, Any], fae: str | Path, fae_id: str) -> str:
    return (f"latent cache '{cache}' was written by a different FAE (identity "
            f"{cache_id['identity'][:12]}..., backbone '{cache_id['backbone']}') than '{fae}' "
            f"(identity {fae_id[:12]}...); re-run `fae cache-latents` with this FAE into a new folder")


# -------------------------------------------------------------------------------------- manifest


def read_manifest(folder: str | Path) -> dict[str, Any]:
    """A cache folder's manifest (finished or not), checked to be one."""
    store = cache_store(folder)
    manifest, path = store.read_manifest(), store.manifest_path
    if manifest is None:
        raise LatentCacheError(f"'{folder}' is not a latent cache (no {MANIFEST}); write one with "
                               f"`fae cache-latents`")
    if manifest.get("format") != FORMAT:
        raise LatentCacheError(f"'{path}' is not a latent cache manifest")
    if manifest.get("version", 1) > VERSION:
        raise LatentCacheError(f"latent cache '{folder}' has manifest version {manifest['version']}; this "
                               f"version of fae reads up to {VERSION}: upgrade fae")
    return manifest


# key of a finished manifest -> its type and how to name it; "fae" also records shape and identity
_MANIFEST_KEYS = {"count": (int, "an integer"), "shard_size": (int, "an integer"),
                  "num_shards": (int, "an integer"), "flip": (bool, "true/false"),
                  "fae": (dict, "an object")}


def _check_complete_manifest(folder: Path, manifest: dict[str, Any]) -> None:
    """A finished manifest holds every key the reader uses, with the right types."""
    path = folder / MANIFEST
    for key, (kind, name) in _MANIFEST_KEYS.items():
        if not isinstance(manifest.get(key), kind) or (kind is int and isinstance(manifest[key], bool)):
            raise LatentCacheError(f"'{path}': '{key}' should be {name}, holds "
                                   f"{manifest.get(key, 'nothing')!r}; the manifest is damaged: "
                                   f"re-run `fae cache-latents` into a new folder")
    for key in ("latent_shape", "identity"):
        if key not in manifest["fae"]:
            raise LatentCacheError(f"'{path}': 'fae' records no '{key}'; the manifest is damaged")


# --------------------------------------------------------------------------------------- reading


class LatentCache:
    """A finished cache folder: manifest, statistics and lazy (memory-mapped) shard access.

    Args:
        folder: the cache folder.
        fae: optional FAE export folder; the cache must have been written by that FAE.
    """

    def __init__(self, folder: str | Path, fae: str | Path | None = None):
        self.folder, self.store = Path(folder), cache_store(folder)
        self.manifest = read_manifest(self.folder)
        if not self.manifest.get("complete"):
            raise LatentCacheError(f"latent cache '{folder}' is incomplete: re-run `fae cache-latents` "
                                   f"with the same config to finish it")
        _check_complete_manifest(self.folder, self.manifest)
        fae_id = None if fae is None else read_fae_export(fae)["identity"]  # verified when the FAE loads
        if fae_id is not None and fae_id != self.identity["identity"]:
            raise LatentCacheError(mismatch_message(folder, self.identity, fae, fae_id))
        self._handles: dict[int, Any] = {}
        for shard in range(self.manifest["num_shards"]):  # a damaged shard fails now, not mid-run
            self._handle(shard)

    @property
    def identity(self) -> dict[str, Any]:
        return self.manifest["fae"]

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        return tuple(self.manifest["fae"]["latent_shape"])

    def __len__(self) -> int:
        return self.manifest["count"]

    @property
    def has_flips(self) -> bool:
        return bool(self.manifest["flip"])

    @property
    def stats_source(self) -> str:
        """Where :meth:`stats` comes from: the FAE export, or (version-1 caches) the cache itself."""
        return "the FAE export" if "latent_stats" in self.manifest else "the cache (version 1)"

    def stats(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-channel (mean, std) [c]: the FAE export's latent statistics recorded in the manifest.
        A version-1 cache gives the statistics it measured itself (stats.safetensors or manifest)."""
        if "latent_stats" in self.manifest:
            stats = self.manifest["latent_stats"]
        elif (self.folder / LEGACY_STATS).is_file():
            stats = load_file(str(self.folder / LEGACY_STATS))
        elif "stats" in self.manifest:
            stats = self.manifest["stats"]
        else:
            raise LatentCacheError(f"latent cache '{self.folder}' records no latent statistics; "
                                   f"re-run `fae cache-latents` into a new folder")
        return (torch.as_tensor(stats["mean"], dtype=torch.float32),
                torch.as_tensor(stats["std"], dtype=torch.float32))

    def _handle(self, shard: int):
        if shard not in self._handles:
            self._handles[shard] = self.store.open_shard(shard)
        return self._handles[shard]

    def item(self, i: int, flipped: bool = False) -> tuple[torch.Tensor, int]:
        """Latent [c, h, w] (float32) and label of dataset item ``i``."""
        shard, j = divmod(i, self.manifest["shard_size"])
        f = self._handle(shard)
        z = f.get_slice("latents_flipped" if flipped else "latents")[j:j + 1][0]
        return z.float(), int(f.get_slice("labels")[j:j + 1][0])

    @property
    def has_captions(self) -> bool:
        return bool(self.manifest.get("captions"))

    @property
    def text_encoder(self) -> dict[str, Any] | None:
        """The manifest's record of the text encoder whose embeddings the cache holds (or None)."""
        return self.manifest.get("text_encoder")

    def captions(self) -> list[str]:
        """Every item's caption [N] (from the shards' metadata)."""
        if not self.has_captions:
            raise LatentCacheError(f"latent cache '{self.folder}' holds no captions: write it from a "
                                   f"captioned dataset (data.name: captions or webdataset)")
        if getattr(self, "_captions", None) is None:
            self._captions = [c for s in range(self.manifest["num_shards"])
                              for c in json.loads(self._handle(s).metadata()["captions"])]
        return self._captions

    def check_text_encoder(self, identity: dict[str, Any]) -> None:
        """Refuse cached text embeddings of an encoder other than ``identity`` (name and max_length)."""
        have = self.text_encoder
        if have is None:
            raise LatentCacheError(f"latent cache '{self.folder}' holds no text embeddings: re-run "
                                   f"`fae cache-latents` with text_encoder set, or use text.embeddings=online")
        keys = ("name", "max_length", "dim", "pooled_dim")
        if any(have.get(k) != identity.get(k) for k in keys):
            raise LatentCacheError(f"latent cache '{self.folder}' holds text embeddings of "
                                   f"{ {k: have.get(k) for k in keys} }, the config's text encoder is "
                                   f"{ {k: identity.get(k) for k in keys} }; use the same text.encoder / "
                                   f"text.max_length, or text.embeddings=online")

    def text_item(self, i: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Cached text embeddings of item ``i``: tokens [L, D], mask [L] bool, pooled [Dp] (float32)."""
        shard, j = divmod(i, self.manifest["shard_size"])
        f = self._handle(shard)
        return tuple(f.get_slice(k)[j:j + 1][0] for k in ("text_tokens", "text_mask", "text_pooled"))

    def labels(self) -> torch.Tensor:
        """Every item's label [N] (reads only the label tensors)."""
        return torch.cat([self._handle(s).get_tensor("labels") for s in range(self.manifest["num_shards"])])

    def __getstate__(self) -> dict[str, Any]:  # DataLoader workers reopen their own handles
        return {**self.__dict__, "_handles": {}}


def complete_cache(folder: str | Path, fae: str | Path | None = None) -> bool:
    """Whether ``folder`` is a complete latent cache (written by the FAE export ``fae``, when given)."""
    try:
        LatentCache(folder, fae=fae)
        return True
    except LatentCacheError:
        return False


class LatentDataset(Dataset):
    """Items ``(normalised latent [c, h, w], label)``; with flips, items N..2N-1 are the flipped copies.

    Args:
        cache: a :class:`LatentCache`.
        mean, std: per-channel statistics [c]; latents are returned as (z - mean) / std.
        flip: include the cache's flipped copies (ignored when the cache has none).
    """

    def __init__(self, cache: LatentCache, mean: torch.Tensor, std: torch.Tensor, flip: bool = True):
        self.cache, self.flip = cache, flip and cache.has_flips
        self.mean, self.std = mean.view(-1, 1, 1).float(), std.view(-1, 1, 1).float()

    def __len__(self) -> int:
        return len(self.cache) * (2 if self.flip else 1)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        flipped, index = divmod(i, len(self.cache))
        z, label = self.cache.item(index, flipped=bool(flipped))
        return (z - self.mean) / self.std, label


class CaptionLatentDataset(Dataset):
    """Text-to-image items: ``(normalised latent [c, h, w], caption)`` or, with cached embeddings,
    ``(latent, text tokens [L, D], text mask [L], pooled [Dp])``; flipped copies as in
    :class:`LatentDataset` (same caption).

    Args:
        cache: a :class:`LatentCache` with captions.
        mean, std: per-channel statistics [c].
        flip: include the flipped copies.
        embeddings: return the cached text embeddings instead of the caption.
    """

    def __init__(self, cache: LatentCache, mean: torch.Tensor, std: torch.Tensor, flip: bool = True,
                 embeddings: bool = False):
        self.latents = LatentDataset(cache, mean, std, flip)
        self.cache, self.embeddings = cache, embeddings
        self.caption_list = None if embeddings else cache.captions()

    def __len__(self) -> int:
        return len(self.latents)

    def __getitem__(self, i: int):
        z, _ = self.latents[i]
        index = i % len(self.cache)
        if self.embeddings:
            tokens, mask, pooled = self.cache.text_item(index)
            return z, tokens.float(), mask.bool(), pooled.float()
        return z, self.caption_list[index]
