"""The token cache: backbone tokens of a dataset on disk, shared by every stage and every run.

Small datasets (the demo) are trained on cached tokens: stage Ia's encoder, stage Ib's pixel
decoder and stage II's x_hat all start from the same frozen backbone tokens, so each image should
pass the backbone once per backbone and resolution, however many stages, runs or ``limit``s ask.

Layout::

    folder/<key16>/manifest.json            what the tokens are (data, backbone, dtype, shape)
    folder/<key16>/shard-00000.safetensors  items [0, S) of the dataset: "tokens" [m, N, D], "labels" [m]
    folder/<key16>/shard-00001.safetensors  items [S, 2S) ...

A request for the first ``n`` items loads the shards it needs and runs the backbone only on the
items no shard holds yet; the last shard may be partial and grows when a later request needs more.

The key (``<key16>`` = the first 16 hex digits of a sha256) covers everything the tokens depend
on: the data config, the backbone name, resolution and weights, the storage dtype, the shard size
and the format version. Two fields of the data config are left out:

* ``flip``: cached tokens are always of the unflipped images (a flipped request is refused;
  random augmentation cannot be cached);
* ``limit``, but only for prefix-stable datasets (:data:`PREFIX_STABLE`: Fashion-MNIST keeps
  "the first ``limit`` items"), so every limit shares one cache. An ImageFolder / folder dataset
  keeps ``limit`` evenly spaced images, a different set for every limit, so there it stays in the key.

Under ``torchrun`` rank 0 computes the missing shards, every rank waits at a barrier, then every
rank loads them. Shards are written atomically (temp file, fsync, rename); a damaged one is a
:class:`~fae.errors.DataError` naming the file.
"""
from __future__ import annotations

import hashlib
import json
import math
from dataclasses import replace
from pathlib import Path

import torch
from torch.utils.data import Dataset

from fae import distributed as du
from fae.backbones.base import Backbone
from fae.config import to_dict
from fae.data.datasets import DataConfig, build_dataset
from fae.errors import ConfigError, DataError

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
PREFIX_STABLE = ("fashion-mnist",)  # datasets whose `limit` keeps the first items


class TokenDataset(Dataset):
    """Cached backbone tokens as a map-style dataset: items ``(tokens [N, D] (stored dtype), label int)``.

    Args:
        tokens: [M, N, D] (float16 by default).
        labels: [M] int64 (-1 when unlabelled).
    """

    def __init__(self, tokens: torch.Tensor, labels: torch.Tensor):
        if tokens.shape[0] != labels.shape[0]:
            raise DataError(f"{tokens.shape[0]} cached token sets but {labels.shape[0]} labels")
        self.tokens, self.labels = tokens, labels

    def __len__(self) -> int:
        return self.tokens.shape[0]

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.tokens[i], int(self.labels[i])


def dtype_named(name: str) -> torch.dtype:
    """``"float16"`` -> ``torch.float16`` (``fae.io.STORAGE_DTYPES``), as a ConfigError otherwise."""
    from fae.io import storage_dtype

    try:
        return storage_dtype(name)
    except ValueError as e:
        raise ConfigError(f"token cache: {e}") from None


class TokenCache:
    """Backbone tokens of datasets, computed once and kept in ``folder``.

    Args:
        folder: root of the cache (one sub-folder per key).
        backbone: the frozen backbone (its registry name and resolution are part of the key).
        weights: where its weights came from (part of the key: other weights, other tokens).
        dtype: storage dtype of the tokens.
        shard_size: items per shard file.
        batch_size: images per backbone pass.
    """

    def __init__(self, folder: str | Path, backbone: Backbone, weights: str | None = None,
                 dtype: torch.dtype = torch.float16, shard_size: int = 1024, batch_size: int = 64):
        if shard_size < 1 or batch_size < 1:
            raise ConfigError(f"token cache: shard_size and batch_size must be >= 1, got {shard_size}, {batch_size}")
        self.folder, self.backbone, self.weights = Path(folder), backbone, weights
        self.dtype, self.shard_size, self.batch_size = dtype, shard_size, batch_size

    # ---- what a key covers ------------------------------------------------------------------------

    def manifest(self, data: DataConfig) -> dict:
        """Everything the cached tokens of ``data`` depend on: the manifest, hashed into the key."""
        if data.flip:
            raise ConfigError("cached tokens are of unflipped images: set data.flip=false (random "
                              "flips cannot be cached)")
        fields = to_dict(data)
        del fields["flip"]
        if data.name in PREFIX_STABLE:
            del fields["limit"]  # "the first n items": every limit is a prefix of one cache
        info = self.backbone.info
        return {"format": FORMAT_VERSION, "data": fields,
                "backbone": {"name": info.name, "resolution": info.resolution, "weights": self.weights},
                "dtype": str(self.dtype).removeprefix("torch."), "shard_size": self.shard_size,
                "tokens": [info.num_tokens, info.dim]}

    def key(self, data: DataConfig) -> str:
        """sha256 (hex) of :meth:`manifest`."""
        return hashlib.sha256(json.dumps(self.manifest(data), sort_keys=True).encode()).hexdigest()

    def folder_for(self, data: DataConfig) -> Path:
        return self.folder / self.key(data)[:16]

    # ---- the one entry point ------------------------------------------------------------------------

    def tokens(self, data: DataConfig, count: int | None = None, progress: bool = True
               ) -> tuple[torch.Tensor, torch.Tensor]:
        """Tokens of the first ``count`` items of ``data`` (default: all of it, ``limit`` applied).

        Returns:
            (tokens [n, N, D] in the storage dtype, labels [n] int64), on the CPU, in dataset order.
        """
        dataset = self._dataset(data)
        n = len(dataset)
        if data.name in PREFIX_STABLE and data.limit is not None:
            n = min(n, data.limit)  # the dataset was built without its limit (see _dataset)
        n = n if count is None else min(count, n)
        folder = self.folder_for(data)
        if du.is_main():
            self._write_manifest(folder, data)
            self._fill(folder, dataset, n, progress, desc=f"tokens ({data.split})")
        du.barrier()
        return self._load(folder, n)

    def dataset(self, data: DataConfig, count: int | None = None, progress: bool = True) -> TokenDataset:
        """:meth:`tokens` as a :class:`TokenDataset`."""
        return TokenDataset(*self.tokens(data, count, progress))

    # ---- shards ---------------------------------------------------------------------------------

    def _dataset(self, data: DataConfig) -> Dataset:
        """The dataset whose item i is the cache's item i (prefix-stable: without ``limit``)."""
        limit = None if data.name in PREFIX_STABLE else data.limit
        return build_dataset(replace(data, limit=limit, flip=False))

    def _shards(self, n: int) -> list[tuple[int, int]]:
        """(shard index, items the request needs from it) covering the first ``n`` items."""
        S = self.shard_size
        return [(i, min(S, n - i * S)) for i in range(math.ceil(n / S))]

    @staticmethod
    def shard_path(folder: Path, index: int) -> Path:
        return folder / f"shard-{index:05d}.safetensors"

    def _write_manifest(self, folder: Path, data: DataConfig) -> None:
        from fae.io import atomic_save_json

        path, what = folder / MANIFEST, self.manifest(data)
        if path.is_file():
            try:
                same = json.loads(path.read_text()) == what
            except (OSError, ValueError) as e:
                raise DataError(f"token cache manifest '{path}' is unreadable ({e}); delete the folder "
                                f"'{folder}' to rebuild it") from None
            if not same:  # a 16-hex-digit key collision, or a hand-edited folder
                raise DataError(f"token cache folder '{folder}' holds other tokens than this request "
                                f"(see '{path}'); delete the folder to rebuild it")
            return
        atomic_save_json(what, path)

    def _fill(self, folder: Path, dataset: Dataset, n: int, progress: bool, desc: str) -> None:
        """Rank 0: compute the items the first ``n`` need that no shard holds yet."""
        from fae.backbones.extract import extract_tokens
        from fae.io import atomic_save_safetensors

        for index, want in self._shards(n):
            path = self.shard_path(folder, index)
            have = self._count(path)
            if have >= want:
                continue
            start = index * self.shard_size
            tokens, labels = extract_tokens(self.backbone, dataset, self.batch_size, dtype=self.dtype,
                                            progress=progress, desc=desc, indices=range(start + have, start + want))
            if have:  # a partial last shard grows
                old_tokens, old_labels = self._read(path)
                tokens, labels = torch.cat([old_tokens, tokens]), torch.cat([old_labels, labels])
            atomic_save_safetensors({"tokens": tokens, "labels": labels}, path)

    def _count(self, path: Path) -> int:
        """Items a shard holds (0 when absent), from its header alone."""
        if not path.is_file():
            return 0
        from safetensors import safe_open

        try:
            with safe_open(str(path), "pt") as f:
                return int(f.get_slice("tokens").get_shape()[0])
        except Exception as e:  # safetensors raises its own error types for damaged files
            raise self._damaged(path, e) from None

    def _read(self, path: Path) -> tuple[torch.Tensor, torch.Tensor]:
        """(tokens [m, N, D], labels [m]) of one shard, checked against this cache's shape and dtype."""
        from safetensors.torch import load_file

        if not path.is_file():
            raise DataError(f"token cache shard '{path}' is missing (under torchrun every node must "
                            f"see the cache: put token_cache_dir on a shared filesystem)")
        try:
            data = load_file(str(path))
            tokens, labels = data["tokens"], data["labels"]
        except Exception as e:
            raise self._damaged(path, e) from None
        info = self.backbone.info
        want = (info.num_tokens, info.dim)
        if tokens.dtype != self.dtype or tuple(tokens.shape[1:]) != want or labels.shape[0] != tokens.shape[0]:
            raise self._damaged(path, f"holds tokens {tuple(tokens.shape)} {tokens.dtype} and "
                                      f"{labels.shape[0]} labels, expected [m, {want[0]}, {want[1]}] {self.dtype}")
        return tokens, labels

    def _load(self, folder: Path, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The first ``n`` items, from the shards (every rank)."""
        info = self.backbone.info
        tokens = [torch.empty((0, info.num_tokens, info.dim), dtype=self.dtype)]
        labels = [torch.empty(0, dtype=torch.long)]
        for index, want in self._shards(n):
            path = self.shard_path(folder, index)
            shard_tokens, shard_labels = self._read(path)
            if shard_tokens.shape[0] < want:
                raise self._damaged(path, f"holds {shard_tokens.shape[0]} items, {want} are needed")
            tokens.append(shard_tokens[:want])
            labels.append(shard_labels[:want])
        return torch.cat(tokens), torch.cat(labels)  # [n, N, D], [n]

    @staticmethod
    def _damaged(path: Path, why) -> DataError:
        return DataError(f"token cache shard '{path}' is damaged ({why}); delete it and it is "
                         f"computed again on the next run")
