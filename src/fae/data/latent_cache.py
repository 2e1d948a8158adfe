"""Latent cache: a dataset encoded once by a trained FAE, for generator training.

Folder layout (``fae cache-latents``):

    manifest.json              format, the FAE's identity (hash of the tensors that define its latent
                               space, see ``FAE.identity``), backbone, resolution, latent shape,
                               dataset, item count, shard plan, and ``complete`` once finished
    shard-00000.safetensors    ``latents`` [n, c, h, w] (posterior means), ``labels`` [n] int64, and
                               ``latents_flipped`` [n, c, h, w] when flipped copies were requested
    stats.safetensors          per-channel ``mean`` / ``std`` [c] over every stored latent

Shard ``i`` holds dataset items ``[i * shard_size, (i + 1) * shard_size)``. Ranks encode shards
``i = rank, rank + world, ...``; every shard is written atomically, so an interrupted run resumes by
skipping the shards that exist. A cache is only ever extended by the FAE that started it.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import torch
from torch.utils.data import Dataset

from fae.config import to_dict
from fae.data.datasets import DataConfig
from fae.errors import ConfigError, LatentCacheError
from fae.io import atomic_save_json, atomic_save_safetensors

FORMAT = "fae-latent-cache"
MANIFEST, STATS = "manifest.json", "stats.safetensors"
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


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

    def validate(self) -> None:
        if not self.fae:
            raise ConfigError("config key 'fae' is required: the folder of an exported FAE")
        for key in ("batch_size", "shard_size"):
            if getattr(self, key) < 1:
                raise ConfigError(f"config key '{key}' must be >= 1, got {getattr(self, key)}")


def shard_path(folder: Path, index: int) -> Path:
    return folder / f"shard-{index:05d}.safetensors"


def fae_identity(fae: Any) -> dict[str, Any]:
    """What a cache (and a generator trained on it) records about the FAE that wrote it."""
    cfg = fae.config
    return {"identity": fae.identity(), "backbone": cfg.backbone, "resolution": cfg.resolution,
            "latent_shape": list(fae.latent_shape)}


def read_fae_identity(folder: str | Path) -> str:
    """The identity hash recorded in an FAE export's config.json (verified when it is loaded)."""
    path = Path(folder) / "config.json"
    try:
        return json.loads(path.read_text())["identity"]
    except (OSError, json.JSONDecodeError, KeyError, TypeError):
        raise LatentCacheError(f"'{folder}' is not an exported FAE (no readable identity in "
                               f"'{path}')") from None


def mismatch_message(cache: str | Path, cache_id: dict[str, Any], fae: str | Path, fae_id: str) -> str:
    return (f"latent cache '{cache}' was written by a different FAE (identity "
            f"{cache_id['identity'][:12]}..., backbone '{cache_id['backbone']}') than '{fae}' "
            f"(identity {fae_id[:12]}...); re-run `fae cache-latents` with this FAE into a new folder")


# --------------------------------------------------------------------------------------- writing


def _plan(cfg: CacheConfig, identity: dict[str, Any], count: int) -> dict[str, Any]:
    return {"format": FORMAT, "version": 1, "complete": False, "fae": identity, "fae_path": cfg.fae,
            "data": to_dict(replace(cfg.data, flip=False)), "count": count, "flip": cfg.flip,
            "shard_size": cfg.shard_size, "num_shards": math.ceil(count / cfg.shard_size),
            "dtype": cfg.dtype}


def _check_resumable(folder: Path, plan: dict[str, Any]) -> None:
    """Refuse to extend a cache started by another FAE or with another dataset/shard plan."""
    path = folder / MANIFEST
    if not path.is_file():
        return
    old = json.loads(path.read_text())
    if old.get("fae", {}).get("identity") != plan["fae"]["identity"]:
        raise LatentCacheError(mismatch_message(folder, old["fae"], plan["fae_path"], plan["fae"]["identity"]))
    for key in ("data", "count", "flip", "shard_size", "dtype"):
        if old.get(key) != plan[key]:
            raise LatentCacheError(f"latent cache '{folder}' was started with {key}={old.get(key)!r}, "
                                   f"now {plan[key]!r}; use a new folder (or the original settings)")


def cache_latents(cfg: CacheConfig) -> Path:
    """Encode ``cfg.data`` with the FAE into ``cfg.out``; resumes an interrupted run. Every rank
    under torchrun takes its share of the shards. Returns the cache folder."""
    from fae.autoencoder import FAE
    from fae.data.datasets import build_dataset
    from fae import distributed as du

    cfg.validate()
    device = du.device()
    fae = FAE.from_pretrained(cfg.fae, device=device)
    dataset = build_dataset(replace(cfg.data, flip=False))
    folder = Path(cfg.out)
    plan = _plan(cfg, fae_identity(fae), len(dataset))
    error = None
    if du.is_main():
        try:
            _check_resumable(folder, plan)
            atomic_save_json(plan, folder / MANIFEST)
        except LatentCacheError as e:
            error = str(e)
    error = du.broadcast_object(error)
    if error is not None:
        raise LatentCacheError(error)
    todo = [i for i in range(du.rank(), plan["num_shards"], du.world_size())
            if not _shard_done(shard_path(folder, i), plan)]
    _encode_shards(fae, dataset, folder, todo, cfg, plan, progress=cfg.progress and du.is_main())
    du.barrier()
    if du.is_main():
        finish_cache(folder)
    du.barrier()
    return folder


def _shard_done(path: Path, plan: dict[str, Any]) -> bool:
    if not path.is_file():
        return False
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return (f.metadata() or {}).get("fae_identity") == plan["fae"]["identity"]


@torch.inference_mode()
def _encode_shards(fae, dataset: Dataset, folder: Path, todo: list[int], cfg: CacheConfig,
                   plan: dict[str, Any], progress: bool) -> None:
    from torch.utils.data import DataLoader, Subset
    from tqdm.auto import tqdm

    bar = tqdm(total=sum(min(cfg.shard_size, plan["count"] - i * cfg.shard_size) for i in todo),
               disable=not progress, desc="cache-latents", unit="img")
    device = fae.latent_mean.device
    for index in todo:
        lo, hi = index * cfg.shard_size, min((index + 1) * cfg.shard_size, plan["count"])
        loader = DataLoader(Subset(dataset, range(lo, hi)), batch_size=cfg.batch_size,
                            num_workers=cfg.num_workers)
        parts: dict[str, list[torch.Tensor]] = {"latents": [], "labels": [], "latents_flipped": []}
        for images, labels in loader:
            images = images.to(device)  # [b, C, H, W] uint8
            parts["latents"].append(fae.encode(images).to("cpu", DTYPES[cfg.dtype]))  # [b, c, h, w]
            if cfg.flip:
                parts["latents_flipped"].append(fae.encode(images.flip(-1)).to("cpu", DTYPES[cfg.dtype]))
            parts["labels"].append(torch.as_tensor(labels, dtype=torch.long))
            bar.update(len(images))
        tensors = {k: torch.cat(v) for k, v in parts.items() if v}
        atomic_save_safetensors(tensors, shard_path(folder, index),
                                metadata={"fae_identity": plan["fae"]["identity"], "start": str(lo)})
    bar.close()


def finish_cache(folder: str | Path) -> dict[str, Any]:
    """Check every shard, write per-channel statistics, and mark the manifest complete."""
    folder = Path(folder)
    manifest = json.loads((folder / MANIFEST).read_text())
    c = manifest["fae"]["latent_shape"][0]
    total, total_sq, n = torch.zeros(c, dtype=torch.float64), torch.zeros(c, dtype=torch.float64), 0
    for i in range(manifest["num_shards"]):
        for latents in _read_shard(folder, i, manifest).values():
            z = latents.double().transpose(0, 1).reshape(c, -1)  # [c, n*h*w]
            total += z.sum(1)
            total_sq += z.square().sum(1)
            n += z.shape[1]
    if n == 0:
        raise LatentCacheError(f"latent cache '{folder}' holds no latents (empty dataset?)")
    mean = total / n
    std = (total_sq / n - mean.square()).clamp_min(0).sqrt()
    if not torch.isfinite(std).all() or (std == 0).any():
        raise LatentCacheError(f"latent cache '{folder}': degenerate per-channel std {std.tolist()}")
    atomic_save_safetensors({"mean": mean.float(), "std": std.float()}, folder / STATS)
    manifest.update(complete=True, stats={"mean": mean.tolist(), "std": std.tolist()})
    atomic_save_json(manifest, folder / MANIFEST)
    return manifest


def _read_shard(folder: Path, index: int, manifest: dict[str, Any]) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    path = shard_path(folder, index)
    if not path.is_file():
        raise LatentCacheError(f"latent cache '{folder}' is missing '{path.name}': re-run "
                               f"`fae cache-latents` to finish it")
    tensors = load_file(str(path))
    return {k: v for k, v in tensors.items() if k.startswith("latents")}


# --------------------------------------------------------------------------------------- reading


class LatentCache:
    """A finished cache folder: manifest, statistics and lazy (memory-mapped) shard access.

    Args:
        folder: the cache folder.
        fae: optional FAE export folder; the cache must have been written by that FAE.
    """

    def __init__(self, folder: str | Path, fae: str | Path | None = None):
        self.folder = Path(folder)
        path = self.folder / MANIFEST
        if not path.is_file():
            raise LatentCacheError(f"'{folder}' is not a latent cache (no {MANIFEST}); write one with "
                                   f"`fae cache-latents`")
        self.manifest = json.loads(path.read_text())
        if self.manifest.get("format") != FORMAT:
            raise LatentCacheError(f"'{path}' is not a latent cache manifest")
        if not self.manifest.get("complete"):
            raise LatentCacheError(f"latent cache '{folder}' is incomplete: re-run `fae cache-latents` "
                                   f"with the same config to finish it")
        if fae is not None and read_fae_identity(fae) != self.identity["identity"]:
            raise LatentCacheError(mismatch_message(folder, self.identity, fae, read_fae_identity(fae)))
        self._handles: dict[int, Any] = {}

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

    def stats(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-channel (mean, std) [c] over every stored latent."""
        from safetensors.torch import load_file

        stats = load_file(str(self.folder / STATS))
        return stats["mean"], stats["std"]

    def _handle(self, shard: int):
        if shard not in self._handles:
            from safetensors import safe_open

            self._handles[shard] = safe_open(str(shard_path(self.folder, shard)), framework="pt")
        return self._handles[shard]

    def item(self, i: int, flipped: bool = False) -> tuple[torch.Tensor, int]:
        """Latent [c, h, w] (float32) and label of dataset item ``i``."""
        shard, j = divmod(i, self.manifest["shard_size"])
        f = self._handle(shard)
        z = f.get_slice("latents_flipped" if flipped else "latents")[j:j + 1][0]
        return z.float(), int(f.get_slice("labels")[j:j + 1][0])

    def labels(self) -> torch.Tensor:
        """Every item's label [N] (reads only the label tensors)."""
        return torch.cat([self._handle(s).get_tensor("labels") for s in range(self.manifest["num_shards"])])

    def __getstate__(self) -> dict[str, Any]:  # DataLoader workers reopen their own handles
        return {**self.__dict__, "_handles": {}}


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
