"""A sharded safetensors store: the on-disk layout under the token cache and the latent cache.

Layout::

    folder/manifest.json              what the shards hold (each cache writes its own keys)
    folder/shard-00000.safetensors    items [0, S) of what the cache stores
    folder/shard-00001.safetensors    items [S, 2S) ...

Shard ``i`` holds items ``[i * S, (i + 1) * S)``; the last one may hold fewer. Every file is written
atomically (``fae.io``: temp name, fsync, rename), so a killed writer leaves whole shards or none,
and resuming is writing the shards that are missing. A shard that cannot be read is an error that
names the file and what to do; a manifest that disagrees with the request is refused, naming the
first key that differs. The store knows nothing of what the shards mean: each cache checks its own
tensors and says in its own words (``ShardStore``'s fields) what the user should do.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import torch
from safetensors import safe_open
from safetensors.torch import load_file

from fae.io import atomic_save_json, atomic_save_safetensors, read_json_object

MANIFEST = "manifest.json"


def shard_path(folder: str | Path, index: int) -> Path:
    """Where shard ``index`` of the store in ``folder`` lives."""
    return Path(folder) / f"shard-{index:05d}.safetensors"


def shard_spans(count: int, shard_size: int) -> list[tuple[int, int, int]]:
    """(shard index, first item, end item) of every shard that holds some of the first ``count`` items."""
    return [(i, i * shard_size, min((i + 1) * shard_size, count)) for i in range(-(-count // shard_size))]


def differing_key(stored: dict[str, Any], wanted: dict[str, Any], keys: Iterable[str]) -> str | None:
    """The first of ``keys`` whose value in two manifests differs (None when they agree; a key
    that is not there reads as null)."""
    return next((k for k in keys if stored.get(k) != wanted.get(k)), None)


@dataclass(frozen=True)
class ShardStore:
    """One store folder, and how its errors speak to the user.

    Args:
        folder: the folder that holds the manifest and the shards.
        name: what the user knows the store as (``"latent cache"``), the first words of its errors.
        error: the exception type of its errors (``DataError``, ``LatentCacheError``).
        rewrite: how a missing shard gets written (``"re-run ... to write it again"``); a damaged
            one is deleted first.
        rebuild: what to do about a damaged manifest.
    """

    folder: Path
    name: str
    error: type[Exception]
    rewrite: str
    rebuild: str

    @property
    def manifest_path(self) -> Path:
        return Path(self.folder) / MANIFEST

    def shard_path(self, index: int) -> Path:
        return shard_path(self.folder, index)

    # ---- the manifest ------------------------------------------------------------------------------

    def read_manifest(self) -> dict[str, Any] | None:
        """The manifest (None when the folder has none yet); an unreadable one is an error."""
        path = self.manifest_path
        if not path.is_file():
            return None
        try:
            return read_json_object(path, ValueError)
        except (OSError, ValueError) as e:
            raise self.error(f"{e}: the {self.name} manifest is damaged; {self.rebuild}") from None

    def write_manifest(self, manifest: dict[str, Any]) -> Path:
        return atomic_save_json(manifest, self.manifest_path)

    def refuse_mismatch(self, stored: dict[str, Any], wanted: dict[str, Any], keys: Iterable[str],
                        fix: str) -> None:
        """Raise when the stored manifest and the request disagree on any of ``keys``; ``fix`` says
        what to do instead."""
        key = differing_key(stored, wanted, keys)
        if key is not None:
            raise self.error(f"{self.name} '{self.folder}' was started with {key}={stored.get(key)!r}, "
                             f"now {wanted.get(key)!r}; {fix}")

    # ---- shards ------------------------------------------------------------------------------------

    def has_shard(self, index: int) -> bool:
        return self.shard_path(index).is_file()

    def missing(self, num_shards: int) -> list[int]:
        """Indices of the first ``num_shards`` shards that are not written yet."""
        return [i for i in range(num_shards) if not self.has_shard(i)]

    def write_shard(self, index: int, tensors: dict[str, torch.Tensor],
                    metadata: dict[str, str] | None = None) -> Path:
        return atomic_save_safetensors(tensors, self.shard_path(index), metadata=metadata)

    def open_shard(self, index: int):
        """``safe_open`` of shard ``index`` (lazy, memory-mapped); a damaged file is an error naming it."""
        path = self._existing(index)
        try:
            return safe_open(str(path), framework="pt")
        except Exception as e:  # safetensors raises its own error types for damaged files
            raise self.damaged(path, e) from None

    def rows(self, index: int, key: str) -> int:
        """Items shard ``index`` holds (the length of its tensor ``key``; 0 when it is not written),
        read from the header alone."""
        path = self.shard_path(index)
        if not path.is_file():
            return 0
        try:
            with safe_open(str(path), framework="pt") as f:
                return int(f.get_slice(key).get_shape()[0])
        except Exception as e:  # safetensors raises its own error types for damaged files
            raise self.damaged(path, e) from None

    def read_shard(self, index: int) -> dict[str, torch.Tensor]:
        """Every tensor of shard ``index``; a damaged file is an error naming it."""
        path = self._existing(index)
        try:
            return load_file(str(path))
        except Exception as e:
            raise self.damaged(path, e) from None

    def _existing(self, index: int) -> Path:
        path = self.shard_path(index)
        if not path.is_file():
            raise self.error(f"{self.name} shard '{path}' is missing; {self.rewrite}")
        return path

    def damaged(self, path: Path, why: Any) -> Exception:
        """The error for a shard that cannot be read or holds the wrong tensors (``why``)."""
        return self.error(f"{self.name} shard '{path}' is damaged ({' '.join(str(why).split())}); "
                          f"delete it and {self.rewrite}")
