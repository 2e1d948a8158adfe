"""WebDataset tar shards of captioned images (CC12M-scale data), read two ways.

A shard is a tar whose members are grouped into samples by key (the WebDataset convention:
``<key>.jpg`` + ``<key>.txt`` are one sample); the image is the first member with an image
extension, the caption the ``.txt`` member (or the ``caption`` / ``txt`` field of a ``.json``).
Shards are named by a brace pattern (``cc12m/{00000..01242}.tar``) or a folder of ``*.tar``.

* :class:`CaptionShardStream` streams samples with the ``webdataset`` package's tar reader, in an
  order that is a pure function of (seed, epoch, rank, world size): each epoch shuffles the shard
  list with a generator seeded by (seed, epoch), and rank r reads shards r, r + world, ... of it,
  each in tar order. Its position (samples this rank has yielded) is its whole state:
  ``state_dict()`` / ``load_state_dict()`` resume at the same sample after a kill, under torchrun
  as in one process (skipped samples are read but not decoded).
* :class:`WebDatasetCaptions` indexes the shards once (tar headers only: member offsets) and reads
  any sample by index: a map-style dataset, so ``fae cache-latents`` shards it over ranks and resumes
  by its shard plan, like every other dataset.

Items are ``(uint8 image [3, H, W], -1, caption)`` (``fae.data.captions``' convention).
"""
from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset, IterableDataset

from fae.data.transforms import center_crop_arr, random_hflip, to_chw_uint8
from fae.errors import DataError, MissingExtraError, install_hint

IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp", "bmp")


def shard_urls(pattern: str) -> list[str]:
    """The shard files of a brace pattern or a folder (sorted); a missing one is a DataError."""
    try:  # lazy: webdataset (with its braceexpand) is the optional [text] extra
        import webdataset  # noqa: F401 - checked here, before any work; the stream reads with it
        from braceexpand import braceexpand
    except ImportError:
        raise MissingExtraError(f"WebDataset shards (data.name: webdataset) need the 'webdataset' package: "
                                f"{install_hint('text')}") from None

    if Path(pattern).is_dir():
        urls = sorted(str(p) for p in Path(pattern).glob("*.tar"))
    else:
        urls = list(braceexpand(pattern))
    if not urls:
        raise DataError(f"no WebDataset shards at '{pattern}' (config key 'data.root': a folder of .tar "
                        f"files or a brace pattern such as 'shards/{{00000..00099}}.tar')")
    missing = [u for u in urls if not Path(u).is_file()]
    if missing:
        raise DataError(f"WebDataset shard '{missing[0]}' does not exist ({len(missing)} of {len(urls)} missing)")
    return urls


def _caption(sample: dict[str, Any], where: str) -> str:
    if "txt" in sample:
        value = sample["txt"]
        return value.decode("utf-8") if isinstance(value, bytes) else str(value)
    if "json" in sample:
        record = json.loads(sample["json"])
        for key in ("caption", "txt"):
            if key in record:
                return str(record[key])
    raise DataError(f"WebDataset sample {where} has no caption (.txt, or .json with 'caption')")


def decode_sample(sample: dict[str, Any], image_size: int | None, where: str) -> tuple[torch.Tensor, int, str]:
    """A raw sample ({extension: bytes}) -> (uint8 image [3, H, W], -1, caption)."""
    ext = next((e for e in IMAGE_EXTENSIONS if e in sample), None)
    if ext is None:
        raise DataError(f"WebDataset sample {where} has no image ({', '.join(IMAGE_EXTENSIONS)})")
    try:
        image = Image.open(io.BytesIO(sample[ext])).convert("RGB")
    except Exception as e:  # noqa: BLE001 - PIL's many decoding errors
        raise DataError(f"WebDataset sample {where}: cannot decode its image ({e})") from None
    arr = center_crop_arr(image, image_size) if image_size else image
    return to_chw_uint8(np.asarray(arr)), -1, _caption(sample, where)


def _epoch_shards(urls: list[str], seed: int, epoch: int, rank: int, world: int) -> list[str]:
    generator = torch.Generator().manual_seed((seed * 1_000_003 + epoch) % 2**63)
    order = torch.randperm(len(urls), generator=generator).tolist()
    return [urls[i] for i in order[rank::world]]


class CaptionShardStream(IterableDataset):
    """Stream (key, image, caption) samples from tar shards with a resumable position.

    Args:
        shards: brace pattern or folder (:func:`shard_urls`).
        rank, world_size: this process and the number of processes (each reads its own shards;
            there must be at least ``world_size`` shards).
        seed: shuffles the shard order per epoch.
        image_size: ADM center crop size (None keeps the stored size).
        epochs: how many passes (None = forever).
    """

    def __init__(self, shards: str, rank: int = 0, world_size: int = 1, seed: int = 0,
                 image_size: int | None = None, epochs: int | None = None):
        self.urls = shard_urls(shards)
        if len(self.urls) < world_size:
            raise DataError(f"{len(self.urls)} WebDataset shard(s) for {world_size} ranks: every rank "
                            f"needs at least one shard")
        self.rank, self.world, self.seed = rank, world_size, seed
        self.image_size, self.epochs = image_size, epochs
        self.position = 0  # samples this rank has yielded, over all epochs

    def state_dict(self) -> dict[str, int]:
        return {"position": self.position, "rank": self.rank, "world_size": self.world, "seed": self.seed}

    def load_state_dict(self, state: dict[str, int]) -> None:
        for key in ("rank", "world_size", "seed"):
            mine = {"rank": self.rank, "world_size": self.world, "seed": self.seed}[key]
            if state[key] != mine:
                raise DataError(f"WebDataset position was saved with {key}={state[key]}, this stream has "
                                f"{mine}: the order differs, so the position does not apply")
        self.position = int(state["position"])

    def _raw(self) -> Iterator[tuple[str, dict[str, Any]]]:
        """(where, raw sample) in stream order, from the first sample of epoch 0."""
        from webdataset.tariterators import tarfile_samples

        epoch = 0
        while self.epochs is None or epoch < self.epochs:
            shards = _epoch_shards(self.urls, self.seed, epoch, self.rank, self.world)
            for sample in tarfile_samples([{"url": url} for url in shards]):
                yield f"'{sample['__key__']}' of '{sample['__url__']}'", sample
            epoch += 1

    def __iter__(self) -> Iterator[tuple[str, torch.Tensor, str]]:
        """Yield ``(key, image, caption)`` from the current position on (advancing it)."""
        for index, (where, sample) in enumerate(self._raw()):
            if index < self.position:
                continue  # already consumed before the resume: read, not decoded
            image, _, caption = decode_sample(sample, self.image_size, where)
            self.position = index + 1
            yield sample["__key__"], image, caption


class WebDatasetCaptions(Dataset):
    """Map-style access to tar shards through an index of member offsets (module docstring).

    Args:
        shards: brace pattern or folder.
        limit: keep the first ``limit`` samples.
        image_size: ADM center crop size.
        flip: random horizontal flip (p = 0.5).
    """

    captioned = True

    def __init__(self, shards: str, limit: int | None = None, image_size: int | None = None, flip: bool = False):
        self.urls = shard_urls(shards)
        self.image_size, self.flip = image_size, flip
        self.index: list[tuple[int, str, dict[str, tuple[int, int]]]] = []
        for shard, url in enumerate(self.urls):
            self.index.extend((shard, key, members) for key, members in _tar_index(url))
        if limit is not None:
            self.index = self.index[:limit]
        if not self.index:
            raise DataError(f"the WebDataset shards at '{shards}' hold no samples")

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int, str]:
        shard, key, members = self.index[i]
        with open(self.urls[shard], "rb") as f:
            sample = {}
            for ext, (offset, size) in members.items():
                f.seek(offset)
                sample[ext] = f.read(size)
        image, label, caption = decode_sample(sample, self.image_size, f"'{key}' of '{self.urls[shard]}'")
        return (random_hflip(image) if self.flip else image), label, caption


def _tar_index(url: str) -> list[tuple[str, dict[str, tuple[int, int]]]]:
    """[(key, {extension: (data offset, size)})] of one tar, in order (WebDataset key rule: the
    member path up to the first dot of its file name)."""
    samples: dict[str, dict[str, tuple[int, int]]] = {}
    try:
        with tarfile.open(url, "r:") as tar:
            for member in tar:
                if not member.isfile():
                    continue
                folder, _, name = member.name.rpartition("/")
                stem, dot, ext = name.partition(".")
                if not dot or stem.startswith("_"):
                    continue
                key = f"{folder}/{stem}" if folder else stem
                samples.setdefault(key, {})[ext.lower()] = (member.offset_data, member.size)
    except tarfile.TarError as e:
        raise DataError(f"WebDataset shard '{url}' is not a readable tar ({e})") from None
    return list(samples.items())
