"""COCO captions (``annotations/captions_val2014.json``) and the caption draw of the COCO
text-to-image FID protocol (``fae eval coco``, :mod:`fae.commands.eval_coco`).

The annotations file is COCO's: ``{"images": [{"id", "file_name", ...}], "annotations":
[{"image_id", "caption", ...}]}`` (val2014: 40,504 images, ~5 captions each). Captions are
whitespace-normalised (COCO has some with trailing spaces or line breaks); an image whose captions
are all empty is left out.

The draw (U-ViT's protocol, baofff/U-ViT ``eval_t2i_discrete.py`` + ``datasets.py``): U-ViT samples
its 30K prompts from a shuffled loader over the val2014 images whose item is one caption chosen
uniformly at random among that image's captions (``MSCOCOFeatureDataset.__getitem__``), so its 30K
prompts are 30K distinct random val images with one random caption each. :func:`draw_captions`
does the same, seeded: a permutation of the images sorted by id, the first ``num`` of it, and for
each one caption drawn uniformly, from one ``numpy`` generator seeded with ``seed``.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fae.errors import DataError


@dataclass(frozen=True)
class CocoImage:
    """One annotated image: its id, file name (relative to the images folder) and captions."""

    image_id: int
    file_name: str
    captions: tuple[str, ...]


@dataclass(frozen=True)
class DrawnCaption:
    """One prompt of the protocol: the image it was drawn from and the caption chosen for it."""

    image_id: int
    file_name: str
    caption: str


def _normalised(text: str) -> str:
    return " ".join(str(text).split())


def read_coco_captions(path: str | Path) -> list[CocoImage]:
    """The images of a COCO captions file that have at least one non-empty caption, sorted by id;
    a missing file or a malformed record is a DataError naming it."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"COCO captions file '{path}' does not exist (config key 'captions')")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        files = {int(im["id"]): str(im["file_name"]) for im in data["images"]}
        captions: dict[int, list[str]] = {i: [] for i in files}
        for ann in data["annotations"]:
            image_id = int(ann["image_id"])
            if image_id not in files:
                raise DataError(f"'{path}': annotation {ann.get('id')} names image {image_id}, which is "
                                f"not among its 'images'")
            text = _normalised(ann["caption"])
            if text:
                captions[image_id].append(text)
    except (ValueError, KeyError, TypeError) as e:
        raise DataError(f"'{path}' is not a COCO captions file ({{'images': [{{'id', 'file_name'}}], "
                        f"'annotations': [{{'image_id', 'caption'}}]}}): {type(e).__name__} {e}") from None
    return [CocoImage(i, files[i], tuple(captions[i])) for i in sorted(files) if captions[i]]


def draw_captions(images: list[CocoImage], num: int, seed: int) -> list[DrawnCaption]:
    """``num`` distinct images in a seeded random order, one uniformly drawn caption each (module
    docstring). The result depends only on (the images, ``num``, ``seed``)."""
    if num < 1:
        raise DataError(f"config key 'num' must be >= 1, got {num}")
    if num > len(images):
        raise DataError(f"asked for {num} prompts, one per image, but the captions file has only "
                        f"{len(images)} captioned images (lower num)")
    ordered = sorted(images, key=lambda im: im.image_id)
    rng = np.random.default_rng(seed)
    chosen = rng.permutation(len(ordered))[:num]
    drawn = []
    for k in chosen:
        image = ordered[int(k)]
        caption = image.captions[int(rng.integers(len(image.captions)))]
        drawn.append(DrawnCaption(image.image_id, image.file_name, caption))
    return drawn
