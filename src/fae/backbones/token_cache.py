"""The token cache: backbone tokens of a dataset on disk, shared by every stage and every run.

Small datasets (the demo) are trained on cached tokens: stage Ia's encoder, stage Ib's pixel
decoder and stage II's x_hat all start from the same frozen backbone tokens, so each image should
pass the backbone once per backbone and resolution, however many stages, runs or ``limit``s ask.

Layout::

    folder/<key16>/manifest.json            what the tokens are (data, backbone, dtype, shape)
    folder/<key16>/shard-00000.safetensors  items [0, S) of the dataset: "tokens" [m, N, D], "labels" [m]
                                            (and "extra" [m, P, D] in a folder with extra tokens)
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
rank loads them. Each key folder is a :mod:`fae.data.shard_store`: shards are written atomically
(temp file, fsync, rename); a damaged one is a :class:`~fae.errors.DataError` naming the file.

Extra tokens (``with_extra=True``: stage Ia with ``extra_tokens: reconstruct``): the shards also
hold the backbone's CLS / register tokens ("extra" [m, P, D], CLS first, from
``backbone.forward_all``), and the manifest says so (``"extra_tokens": [P, D]``). The flag is not
part of the key: a folder filled with extra tokens also serves patch-only requests (which read
"tokens" alone, and keep filling it with extra tokens so every shard stays complete), so stage Ib
shares stage Ia's cache. A folder filled *without* them is refused for a request that needs them
(a :class:`~fae.errors.DataError` naming the folder: delete it to rebuild it with them), never
silently read as if it had them.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import replace
from pathlib import Path

import torch
from torch.utils.data import Dataset

from fae import distributed as du
from fae.backbones.base import Backbone
from fae.backbones.extract import extract_tokens, extract_tokens_and_extra
from fae.config import to_dict
from fae.data.datasets import DataConfig, build_dataset
from fae.data.shard_store import ShardStore, shard_spans
from fae.errors import ConfigError, DataError
from fae.io import storage_dtype

FORMAT_VERSION = 1
EXTRA_FIELD = "extra_tokens"  # manifest field of a folder whose shards hold CLS / registers (not keyed)
PREFIX_STABLE = ("fashion-mnist",)  # datasets whose `limit` keeps the first items


def _patches_only(manifest: dict) -> dict:
    """A manifest without :data:`EXTRA_FIELD` (what the key covers)."""
    return {k: v for k, v in manifest.items() if k != EXTRA_FIELD}


class TokenDataset(Dataset):
    """Cached backbone tokens as a map-style dataset: items ``(tokens [N, D] (stored dtype), label int)``,
    or ``((tokens [N, D], extra [P, D]), label int)`` when it holds extra tokens.

    Args:
        tokens: [M, N, D] (float16 by default).
        labels: [M] int64 (-1 when unlabelled).
        extra: [M, P, D] CLS / register tokens, or None (patch tokens only).
    """

    def __init__(self, tokens: torch.Tensor, labels: torch.Tensor, extra: torch.Tensor | None = None):
        if tokens.shape[0] != labels.shape[0]:
            raise DataError(f"{tokens.shape[0]} cached token sets but {labels.shape[0]} labels")
        if extra is not None and extra.shape[0] != tokens.shape[0]:
            raise DataError(f"{tokens.shape[0]} cached token sets but {extra.shape[0]} extra token sets")
        self.tokens, self.labels, self.extra = tokens, labels, extra

    def __len__(self) -> int:
        return self.tokens.shape[0]

    def __getitem__(self, i: int) -> tuple[torch.Tensor | tuple[torch.Tensor, torch.Tensor], int]:
        if self.extra is None:
            return self.tokens[i], int(self.labels[i])
        return (self.tokens[i], self.extra[i]), int(self.labels[i])


def dtype_named(name: str) -> torch.dtype:
    """``"float16"`` -> ``torch.float16`` (``fae.io.STORAGE_DTYPES``), as a ConfigError otherwise."""
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
        with_extra: also keep (and return) the CLS / register tokens; refused for a backbone
            without them, and for a folder filled without them.
    """

    def __init__(self, folder: str | Path, backbone: Backbone, weights: str | None = None,
                 dtype: torch.dtype = torch.float16, shard_size: int = 1024, batch_size: int = 64,
                 with_extra: bool = False):
        if shard_size < 1 or batch_size < 1:
            raise ConfigError(f"token cache: shard_size and batch_size must be >= 1, got {shard_size}, {batch_size}")
        if with_extra and backbone.info.prefix_tokens == 0:
            raise ConfigError(f"token cache: backbone '{backbone.info.name}' has no CLS or register "
                              "tokens to cache (with_extra)")
        self.folder, self.backbone, self.weights = Path(folder), backbone, weights
        self.dtype, self.shard_size, self.batch_size = dtype, shard_size, batch_size
        self.with_extra = with_extra

    # ---- what a key covers ------------------------------------------------------------------------

    def manifest(self, data: DataConfig) -> dict:
        """Everything the cached tokens of ``data`` depend on: the manifest, hashed into the key
        (all but :data:`EXTRA_FIELD`, present with ``with_extra``)."""
        if data.flip:
            raise ConfigError("cached tokens are of unflipped images: set data.flip=false (random "
                              "flips cannot be cached)")
        fields = to_dict(data)
        del fields["flip"]
        if data.name in PREFIX_STABLE:
            del fields["limit"]  # "the first n items": every limit is a prefix of one cache
        info = self.backbone.info
        what = {"format": FORMAT_VERSION, "data": fields,
                "backbone": {"name": info.name, "resolution": info.resolution, "weights": self.weights},
                "dtype": str(self.dtype).removeprefix("torch."), "shard_size": self.shard_size,
                "tokens": [info.num_tokens, info.dim]}
        if self.with_extra:
            what[EXTRA_FIELD] = [info.prefix_tokens, info.dim]
        return what

    def key(self, data: DataConfig) -> str:
        """sha256 (hex) of :meth:`manifest` without :data:`EXTRA_FIELD` (one folder either way)."""
        return hashlib.sha256(json.dumps(_patches_only(self.manifest(data)), sort_keys=True).encode()).hexdigest()

    def folder_for(self, data: DataConfig) -> Path:
        return self.folder / self.key(data)[:16]

    # ---- the one entry point ------------------------------------------------------------------------

    def tokens(self, data: DataConfig, count: int | None = None, progress: bool = True
               ) -> tuple[torch.Tensor, torch.Tensor]:
        """Tokens of the first ``count`` items of ``data`` (default: all of it, ``limit`` applied).

        Returns:
            (tokens [n, N, D] in the storage dtype, labels [n] int64), on the CPU, in dataset order
            (the extra tokens, with ``with_extra``, come from :meth:`dataset`).
        """
        tokens, labels, _ = self._request(data, count, progress)
        return tokens, labels

    def dataset(self, data: DataConfig, count: int | None = None, progress: bool = True) -> TokenDataset:
        """:meth:`tokens` as a :class:`TokenDataset` (with the extra tokens, with ``with_extra``)."""
        return TokenDataset(*self._request(data, count, progress))

    def _request(self, data: DataConfig, count: int | None, progress: bool
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """(tokens [n, N, D], labels [n], extra [n, P, D] or None) of :meth:`tokens`."""
        dataset = self._dataset(data)
        n = len(dataset)
        if data.name in PREFIX_STABLE and data.limit is not None:
            n = min(n, data.limit)  # the dataset was built without its limit (see _dataset)
        n = n if count is None else min(count, n)
        folder = self.folder_for(data)
        store = _store(folder)
        if du.is_main():
            holds_extra = self._write_manifest(store, data)
            self._fill(store, dataset, n, progress, f"tokens ({data.split})", holds_extra)
        du.barrier()
        return self._load(store, n)

    # ---- shards ---------------------------------------------------------------------------------

    def _dataset(self, data: DataConfig) -> Dataset:
        """The dataset whose item i is the cache's item i (prefix-stable: without ``limit``)."""
        limit = None if data.name in PREFIX_STABLE else data.limit
        return build_dataset(replace(data, limit=limit, flip=False))

    def _write_manifest(self, store: ShardStore, data: DataConfig) -> bool:
        """Check (or write) the folder's manifest; returns whether its shards hold extra tokens."""
        what = self.manifest(data)
        stored = store.read_manifest()
        if stored is None:
            store.write_manifest(what)
            return self.with_extra
        # a 16-hex-digit key collision, or a hand-edited folder
        keys = [k for k in {**what, **stored} if k != EXTRA_FIELD]
        store.refuse_mismatch(stored, what, keys, fix="delete the folder to rebuild it")
        if self.with_extra and stored.get(EXTRA_FIELD) != what[EXTRA_FIELD]:
            raise DataError(f"token cache folder '{store.folder}' holds patch tokens only, without the CLS / "
                            f"register tokens this request needs (extra_tokens: reconstruct); delete "
                            f"the folder to rebuild it with them")
        return EXTRA_FIELD in stored

    def _fill(self, store: ShardStore, dataset: Dataset, n: int, progress: bool, desc: str,
              extra: bool) -> None:
        """Rank 0: compute the items the first ``n`` need that no shard holds yet (with their
        extra tokens when the folder holds them, ``extra``)."""
        extract = extract_tokens_and_extra if extra else extract_tokens
        for index, start, stop in shard_spans(n, self.shard_size):
            have = store.rows(index, "tokens")
            if have >= stop - start:
                continue
            new = extract(self.backbone, dataset, self.batch_size, dtype=self.dtype, progress=progress,
                          desc=desc, indices=range(start + have, stop))
            if have:  # a partial last shard grows
                new = tuple(torch.cat([old, part]) for old, part in zip(self._read(store, index, extra), new))
            store.write_shard(index, dict(zip(("tokens", "labels", "extra"), new)))

    def _read(self, store: ShardStore, index: int, extra: bool = False) -> tuple[torch.Tensor, ...]:
        """(tokens [m, N, D], labels [m]) of one shard, and its extra tokens [m, P, D] with
        ``extra``, checked against this cache's shape and dtype."""
        path = store.shard_path(index)
        if not path.is_file():
            raise DataError(f"token cache shard '{path}' is missing (under torchrun every node must "
                            f"see the cache: put token_cache_dir on a shared filesystem)")
        data = store.read_shard(index)
        if "tokens" not in data or "labels" not in data:
            raise store.damaged(path, f"holds {sorted(data)}, not 'tokens' and 'labels'")
        tokens, labels = data["tokens"], data["labels"]
        info = self.backbone.info
        want = (info.num_tokens, info.dim)
        if tokens.dtype != self.dtype or tuple(tokens.shape[1:]) != want or labels.shape[0] != tokens.shape[0]:
            raise store.damaged(path, f"holds tokens {tuple(tokens.shape)} {tokens.dtype} and "
                                      f"{labels.shape[0]} labels, expected [m, {want[0]}, {want[1]}] {self.dtype}")
        if not extra:
            return tokens, labels
        extra_want = (tokens.shape[0], info.prefix_tokens, info.dim)
        if "extra" not in data:
            raise store.damaged(path, "holds no extra (CLS / register) tokens, but its folder's manifest "
                                      "says it does")
        if data["extra"].dtype != self.dtype or tuple(data["extra"].shape) != extra_want:
            raise store.damaged(path, f"holds extra tokens {tuple(data['extra'].shape)} {data['extra'].dtype}, "
                                      f"expected {list(extra_want)} {self.dtype}")
        return tokens, labels, data["extra"]

    def _load(self, store: ShardStore, n: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """The first ``n`` items, from the shards (every rank); extra tokens with ``with_extra``."""
        info = self.backbone.info
        parts = [[torch.empty((0, info.num_tokens, info.dim), dtype=self.dtype)],
                 [torch.empty(0, dtype=torch.long)]]
        if self.with_extra:
            parts.append([torch.empty((0, info.prefix_tokens, info.dim), dtype=self.dtype)])
        for index, start, stop in shard_spans(n, self.shard_size):
            want, shard = stop - start, self._read(store, index, self.with_extra)
            if shard[0].shape[0] < want:
                raise store.damaged(store.shard_path(index), f"holds {shard[0].shape[0]} items, {want} are needed")
            for kept, part in zip(parts, shard):
                kept.append(part[:want])
        tokens, labels, *extra = (torch.cat(kept) for kept in parts)  # [n, N, D], [n], ([n, P, D])
        return tokens, labels, extra[0] if extra else None


def _store(folder: Path) -> ShardStore:
    """The shard store of one key folder (its errors say how the cache heals itself)."""
    return ShardStore(folder, "token cache", DataError, rewrite="it is computed again on the next run",
                      rebuild=f"delete the folder '{folder}' to rebuild it")
