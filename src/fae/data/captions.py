"""Captioned images for text-to-image: an image folder plus a captions file (JSONL or CSV), and
WebDataset tar shards (``fae.data.webdataset_shards``).

Items are ``(uint8 image [3, H, W], -1, caption)``: the ``fae.data`` image convention with the
caption third, which ``fae cache-latents`` stores beside the latents (and encodes, given a text
encoder). ``captioned = True`` marks such datasets.

Captions file (paths relative to the image folder ``root``):

    JSONL: one object a line, {"file": "a/b.jpg", "caption": "a dog on a beach"}
    CSV:   a header with the columns ``file`` and ``caption``

A file with several lines is several items (an image with k captions is k items).
"""
from __future__ import annotations

import csv
import json
from pathlib import Path

import torch
from torch.utils.data import Dataset

from fae.data.imagefolder import ImageFiles, evenly_spaced
from fae.errors import DataError


def read_captions(path: str | Path) -> list[tuple[str, str]]:
    """(file, caption) pairs of a JSONL or CSV captions file; a bad line is a DataError naming it."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"captions file '{path}' does not exist (config key 'data.captions')")
    if path.suffix.lower() == ".csv":
        with path.open(newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
        if rows and not {"file", "caption"} <= set(rows[0]):
            raise DataError(f"'{path}': a CSV captions file needs the columns 'file' and 'caption', "
                            f"has {sorted(rows[0])}")
        return [(row["file"], row["caption"]) for row in rows]
    pairs = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            pairs.append((str(record["file"]), str(record["caption"])))
        except (ValueError, KeyError, TypeError):
            raise DataError(f"'{path}' line {number}: expected {{\"file\": ..., \"caption\": ...}}, "
                            f"got {line[:80]!r}") from None
    return pairs


class CaptionFolder(Dataset):
    """Images below ``root`` with the captions of a JSONL / CSV file (module docstring).

    Args:
        root: the image folder.
        captions: the captions file.
        limit: keep this many items, evenly spaced.
        image_size: ADM center crop size (None keeps the stored size).
        flip: random horizontal flip (p = 0.5).
        skip_corrupt: replace an unreadable image by the next readable one, with a warning.
    """

    captioned = True

    def __init__(self, root: str | Path, captions: str | Path, limit: int | None = None,
                 image_size: int | None = None, flip: bool = False, skip_corrupt: bool = False):
        pairs = read_captions(captions)
        if not pairs:
            raise DataError(f"captions file '{captions}' holds no captions")
        keep = evenly_spaced(len(pairs), limit)
        pairs = [pairs[int(i)] for i in keep]
        files = [Path(root) / f for f, _ in pairs]
        missing = [str(f) for f in files if not f.is_file()]
        if missing:
            raise DataError(f"captions file '{captions}' names {len(missing)} image(s) missing below "
                            f"'{root}', e.g. '{missing[0]}'")
        self.images = ImageFiles(files, None, image_size, flip, skip_corrupt)
        self.caption_list = [c for _, c in pairs]

    def __len__(self) -> int:
        return len(self.caption_list)

    def check_batchable(self) -> None:
        self.images.check_batchable()

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int, str]:
        image, _ = self.images[i]
        return image, -1, self.caption_list[i]


class CaptionedItems(Dataset):
    """Any ``fae.data`` dataset with one given caption per item: items ``(x, label, caption)``
    (e.g. cached backbone tokens with captions generated for them, as in ``fae demo --t2i``).

    Args:
        dataset: items ``(x, label)``.
        captions: one caption per item, in item order.
    """

    captioned = True

    def __init__(self, dataset: Dataset, captions: list[str]):
        if len(captions) != len(dataset):
            raise DataError(f"need one caption per item: {len(dataset)} items, {len(captions)} captions")
        self.dataset, self.caption_list = dataset, list(captions)

    def __len__(self) -> int:
        return len(self.caption_list)

    def check_batchable(self) -> None:
        check = getattr(self.dataset, "check_batchable", None)
        if callable(check):
            check()

    def __getitem__(self, i: int):
        x, label = self.dataset[i][:2]
        return x, label, self.caption_list[i]
