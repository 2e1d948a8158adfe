"""Latent cache, write side: ``fae cache-latents`` encodes a dataset once with a trained FAE.

The folder layout and the reader are in :mod:`fae.data.latent_cache`; the files themselves are a
:mod:`fae.data.shard_store` (manifest, shards written atomically, damaged shards named).

Captions and text embeddings (text-to-image): a dataset whose items are ``(image, label, caption)``
stores its captions; given a ``text_encoder`` the writer also stores its embeddings of them, and the
manifest records the encoder.

Ranks encode shards ``i = rank, rank + world, ...``; every shard is written atomically, so an
interrupted run resumes by skipping the shards that exist. A cache is only ever extended by the FAE
that started it, with the dataset and shard plan it started with. ``finish_cache`` checks every
shard before the manifest says ``complete``.

This module never imports the autoencoder: the writer takes any *encoder* (``encode(uint8 images
[b, C, H, W]) -> z [b, c, h, w]``) plus what the manifest must say about it.
"""
from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, Subset

from fae import distributed as du
from fae.config import to_dict
from fae.data.batches import stack_images
from fae.data.datasets import build_dataset, check_batchable
from fae.data.latent_cache import FORMAT, VERSION, CacheConfig, cache_store, mismatch_message, read_manifest
from fae.data.shard_store import ShardStore
from fae.errors import ConfigError, LatentCacheError
from fae.io import storage_dtype
from fae.progress import show_progress

# Manifest keys a resumed run must share with the run that started the cache.
_PLAN_KEYS = ("data", "count", "flip", "shard_size", "dtype", "captions", "text_encoder")


def stats_record(mean: torch.Tensor, std: torch.Tensor, channels: int, source: str) -> dict[str, list[float]]:
    """The manifest's ``latent_stats``: per-channel mean / std [c] as given by the FAE export."""
    mean, std = mean.detach().float().cpu().reshape(-1), std.detach().float().cpu().reshape(-1)
    if mean.shape != (channels,) or std.shape != (channels,):
        raise LatentCacheError(f"latent statistics of '{source}' have {mean.numel()} / {std.numel()} "
                               f"channels, its latents {channels}")
    if not (torch.isfinite(mean).all() and torch.isfinite(std).all() and (std > 0).all()):
        raise LatentCacheError(f"latent statistics of '{source}' are degenerate (std {std.tolist()}); "
                               f"re-export the FAE with `fae train autoencoder`")
    return {"mean": mean.tolist(), "std": std.tolist()}


def _plan(cfg: CacheConfig, identity: dict[str, Any], stats: dict[str, list[float]], count: int,
          text: dict[str, Any] | None = None) -> dict[str, Any]:
    plan = {"format": FORMAT, "version": VERSION, "complete": False, "fae": identity, "fae_path": cfg.fae,
            "latent_stats": stats, "data": to_dict(replace(cfg.data, flip=False)), "count": count,
            "flip": cfg.flip, "shard_size": cfg.shard_size, "num_shards": math.ceil(count / cfg.shard_size),
            "dtype": cfg.dtype}
    if text is not None:  # captioned data only: older manifests keep their keys
        plan.update(captions=True, text_encoder=text.get("encoder"))
    return plan


def _check_resumable(store: ShardStore, plan: dict[str, Any]) -> None:
    """Refuse to extend a cache started by another FAE or with another dataset/shard plan."""
    if not store.manifest_path.is_file():
        return
    old = read_manifest(store.folder)
    if old.get("fae", {}).get("identity") != plan["fae"]["identity"]:
        raise LatentCacheError(mismatch_message(store.folder, old["fae"], plan["fae_path"], plan["fae"]["identity"]))
    keys = _PLAN_KEYS + (("latent_stats",) if "latent_stats" in old else ())
    store.refuse_mismatch(old, plan, keys, fix="use a new folder (or the original settings)")


def write_cache(cfg: CacheConfig, encoder, *, identity: dict[str, Any],
                latent_mean: torch.Tensor, latent_std: torch.Tensor,
                device: torch.device | str = "cpu", dataset: Dataset | None = None,
                text_encoder=None) -> Path:
    """Encode ``cfg.data`` with ``encoder`` into ``cfg.out``; resumes an interrupted run. Every rank
    under torchrun takes its share of the shards. Returns the cache folder.

    Args:
        cfg: what to encode and how to store it.
        encoder: ``encode(uint8 images [b, C, H, W] on device) -> latents [b, c, h, w]``.
        identity: the manifest's ``fae`` entry (``identity``, ``backbone``, ``resolution``,
            ``latent_shape``); a generator trained on the cache records it.
        latent_mean, latent_std: the FAE export's per-channel latent statistics [c] (recorded as
            the cache's statistics, not re-measured).
        device: where the images go before ``encode``.
        dataset: the items to encode in place of ``build_dataset(cfg.data)`` (same order and
            labels), e.g. their cached backbone tokens, which ``encode`` takes as well.
        text_encoder: for captioned datasets, ``encode(captions) -> (tokens, mask, pooled)`` with
            ``identity()`` (a ``fae.text.TextEncoder``); its embeddings are stored beside the latents.
    """
    cfg.validate()
    dataset = build_dataset(replace(cfg.data, flip=False)) if dataset is None else dataset
    check_batchable(dataset)
    store = cache_store(cfg.out)
    stats = stats_record(latent_mean, latent_std, identity["latent_shape"][0], cfg.fae)
    captioned = bool(getattr(dataset, "captioned", False))
    if text_encoder is not None and not captioned:
        raise ConfigError("a text encoder was given, but the dataset has no captions (data.name: captions "
                          "or webdataset)")
    text = {"encoder": text_encoder.identity() if text_encoder is not None else None} if captioned else None
    plan = _plan(cfg, identity, stats, len(dataset), text)
    _start(store, plan)
    todo = [i for i in range(du.rank(), plan["num_shards"], du.world_size()) if not _shard_done(store, i, plan)]
    _encode_shards(encoder, dataset, store, todo, cfg, plan, device, progress=cfg.progress and du.is_main(),
                   text_encoder=text_encoder)
    du.barrier()
    if du.is_main():
        finish_cache(store.folder)
    du.barrier()
    return store.folder


def _start(store: ShardStore, plan: dict[str, Any]) -> None:
    """Rank 0 checks and writes the manifest; every rank raises the same error if it fails."""
    def check_and_write() -> None:
        _check_resumable(store, plan)
        store.write_manifest(plan)

    du.on_main(check_and_write, LatentCacheError, LatentCacheError)


def _shard_done(store: ShardStore, index: int, plan: dict[str, Any]) -> bool:
    """Whether shard ``index`` is written, readable and by this FAE (else it is written again)."""
    if not store.has_shard(index):
        return False
    try:
        with store.open_shard(index) as f:
            return (f.metadata() or {}).get("fae_identity") == plan["fae"]["identity"]
    except LatentCacheError:  # a damaged shard is written again
        return False


def _collate(items: list[tuple]) -> tuple:
    """The DataLoader's batches, built by the one stacking rule (mixed sizes name the fix):
    (images, labels) or, for captioned items, (images, labels, captions)."""
    images = stack_images([item[0] for item in items])
    labels = torch.tensor([int(item[1]) for item in items], dtype=torch.long)
    return (images, labels) if len(items[0]) == 2 else (images, labels, [item[2] for item in items])


@torch.inference_mode()
def _encode_shards(encoder, dataset: Dataset, store: ShardStore, todo: list[int], cfg: CacheConfig,
                   plan: dict[str, Any], device: torch.device | str, progress: bool, text_encoder=None) -> None:
    bar = show_progress(total=sum(min(cfg.shard_size, plan["count"] - i * cfg.shard_size) for i in todo),
                        disable=not progress, desc="cache-latents", unit="img")
    dtype = storage_dtype(cfg.dtype)  # validated by CacheConfig's Literal
    for index in todo:
        lo, hi = index * cfg.shard_size, min((index + 1) * cfg.shard_size, plan["count"])
        # A DataLoader (not fae.data.batches.iterate_batches) so that num_workers can decode JPEGs.
        loader = DataLoader(Subset(dataset, range(lo, hi)), batch_size=cfg.batch_size,
                            num_workers=cfg.num_workers, collate_fn=_collate)
        parts: dict[str, list[torch.Tensor]] = {"latents": [], "labels": [], "latents_flipped": [],
                                                "text_tokens": [], "text_mask": [], "text_pooled": []}
        captions: list[str] = []
        for images, labels, *texts in loader:
            images = images.to(device)  # [b, C, H, W] uint8
            if texts:
                captions.extend(texts[0])
            if texts and text_encoder is not None:
                tokens, mask, pooled = text_encoder.encode(texts[0])  # [b, L, D], [b, L], [b, Dp]
                parts["text_tokens"].append(tokens.to("cpu", dtype))
                parts["text_mask"].append(mask.cpu())
                parts["text_pooled"].append(pooled.to("cpu", dtype))
            parts["latents"].append(encoder.encode(images).to("cpu", dtype))  # [b, c, h, w]
            if cfg.flip:
                parts["latents_flipped"].append(encoder.encode(images.flip(-1)).to("cpu", dtype))
            parts["labels"].append(labels)
            bar.update(len(images))
        tensors = {k: torch.cat(v) for k, v in parts.items() if v}
        metadata = {"fae_identity": plan["fae"]["identity"], "start": str(lo)}
        if plan.get("captions"):
            metadata["captions"] = json.dumps(captions)
        store.write_shard(index, tensors, metadata=metadata)
    bar.close()


def finish_cache(folder: str | Path) -> dict[str, Any]:
    """Check that every shard is present, holds its items and only finite latents; then mark the
    manifest complete. (Statistics are the FAE's, recorded when the cache was started.)"""
    store = cache_store(folder)
    manifest = read_manifest(store.folder)
    if manifest["count"] == 0:
        raise LatentCacheError(f"latent cache '{store.folder}' holds no latents (empty dataset?)")
    missing = store.missing(manifest["num_shards"])
    if missing:
        names = ", ".join(f"'{store.shard_path(i).name}'" for i in missing)
        raise LatentCacheError(f"latent cache '{store.folder}' is missing {names}: re-run "
                               f"`fae cache-latents` to finish it")
    for index in range(manifest["num_shards"]):
        _check_shard(store, index, manifest)
    manifest["complete"] = True
    store.write_manifest(manifest)
    return manifest


def _check_shard(store: ShardStore, index: int, manifest: dict[str, Any]) -> None:
    """Shard ``index`` holds its items' latents (and flips, labels, text embeddings), all finite."""
    path = store.shard_path(index)
    with store.open_shard(index) as f:
        tensors = {key: f.get_tensor(key) for key in f.keys()}
    n = min(manifest["shard_size"], manifest["count"] - index * manifest["shard_size"])
    shape = (n, *manifest["fae"]["latent_shape"])
    for key in ["latents"] + (["latents_flipped"] if manifest["flip"] else []):
        z = tensors.get(key)
        if z is None or tuple(z.shape) != shape:
            raise store.damaged(path, f"'{key}' should be {list(shape)}, holds "
                                      f"{'nothing' if z is None else list(z.shape)}")
        if not torch.isfinite(z).all():
            raise LatentCacheError(f"'{path}': '{key}' holds non-finite latents (an FAE or dtype "
                                   f"problem: try dtype=float32)")
    if tuple(tensors.get("labels", torch.empty(0)).shape) != (n,):
        raise store.damaged(path, f"'labels' should hold {n} items")
    text = manifest.get("text_encoder")
    if text is not None:
        for key, width in (("text_tokens", text["dim"]), ("text_pooled", text["pooled_dim"])):
            t = tensors.get(key)
            if t is None or t.shape[0] != n or t.shape[-1] != width or not torch.isfinite(t.float()).all():
                raise store.damaged(path, f"'{key}' should hold {n} finite text embeddings of width {width}")
