"""COCO captions in the Karpathy split format (``dataset_coco.json``), for text-image retrieval.

The file (Karpathy & Fei-Fei's splits, used by the COCO 5K retrieval benchmark) is one JSON object
``{"images": [...], "dataset": "coco"}``; each image entry has ``filepath`` (e.g. "val2014"),
``filename`` ("COCO_val2014_000000391895.jpg"), ``split`` ("train" / "restval" / "val" / "test")
and ``sentences``, a list of objects with the caption in ``raw`` (5 per image, a few have more).
The test split holds 5,000 images and 25,010 captions. Images are looked up as
``images/<filepath>/<filename>``, else ``images/<filename>``.

:func:`squashed_images` reads such a split's images as SigLIP's processor does: the whole image
resized to a square (no crop), for the retrieval protocol of ``fae.evaluation.retrieval``.
"""
from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from fae.data.imagefolder import ImageFiles
from fae.errors import DataError


@dataclass
class CaptionedSplit:
    """One split: ``files[i]`` is image i; ``captions[j]`` belongs to image ``caption_image[j]``."""

    files: list[Path]
    captions: list[str]
    caption_image: list[int]


def _entry_file(images: Path, entry: dict, path: Path, index: int) -> Path:
    try:
        name = entry["filename"]
    except (KeyError, TypeError):
        raise DataError(f"'{path}': image entry {index} has no 'filename'") from None
    for candidate in (images / entry.get("filepath", "") / name, images / name):
        if candidate.is_file():
            return candidate
    raise DataError(f"'{path}': image '{name}' (entry {index}) is neither under "
                    f"'{images / entry.get('filepath', '')}' nor '{images}' (config key 'images')")


def read_karpathy(captions: str | Path, images: str | Path, split: str = "test",
                  limit: int | None = None) -> CaptionedSplit:
    """The images and captions of one split of a Karpathy-format file, in file order.

    Args:
        captions: the ``dataset_coco.json`` file.
        images: the folder holding ``val2014/`` (etc.) or the images themselves.
        split: which split ("test": the 5K benchmark).
        limit: keep only the first ``limit`` images of the split (and their captions).
    """
    path, images = Path(captions), Path(images)
    if not path.is_file():
        raise DataError(f"captions file '{path}' does not exist (config key 'captions')")
    if not images.is_dir():
        raise DataError(f"image folder '{images}' does not exist (config key 'images')")
    try:
        entries = json.loads(path.read_text(encoding="utf-8"))["images"]
    except (ValueError, KeyError, TypeError) as e:
        raise DataError(f"'{path}' is not a Karpathy-format captions file (a JSON object with "
                        f"'images': [...]): {type(e).__name__}: {e}") from None
    chosen = [(i, e) for i, e in enumerate(entries) if isinstance(e, dict) and e.get("split") == split]
    if limit is not None:
        chosen = chosen[:limit]
    if not chosen:
        raise DataError(f"'{path}' has no images in split '{split}' (config key 'split')")
    out = CaptionedSplit([], [], [])
    for index, entry in chosen:
        sentences = entry.get("sentences") or []
        raws = [s.get("raw") for s in sentences if isinstance(s, dict)]
        if not raws or not all(isinstance(r, str) and r.strip() for r in raws):
            raise DataError(f"'{path}': image entry {index} has no captions (sentences[].raw)")
        out.files.append(_entry_file(images, entry, path, index))
        out.captions += [r.strip() for r in raws]
        out.caption_image += [len(out.files) - 1] * len(raws)
    return out


def squash_resize(image: Image.Image, size: int) -> np.ndarray:
    """The whole image resized to ``size x size`` with PIL's bilinear filter (aspect ratio not
    kept, nothing cut): SigLIP's image processor (``do_resize`` to a fixed height and width) and
    big_vision's ``resize(RES)``. PIL RGB image -> uint8 array [size, size, 3]."""
    return np.asarray(image.resize((size, size), resample=Image.BILINEAR))


def squashed_images(files: list[Path], size: int) -> ImageFiles:
    """Image files -> ``(uint8 [3, S, S], index)``, each image squashed to ``S x S`` by
    :func:`squash_resize`: the folder dataset with that crop, the file's position standing where
    a folder dataset puts a label.

    Args:
        files: image paths.
        size: the square side S (the vision tower's input resolution).
    """
    if size < 1:
        raise DataError(f"image size must be >= 1, got {size}")
    return ImageFiles(files, list(range(len(files))), crop=functools.partial(squash_resize, size=size))
