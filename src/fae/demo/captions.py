"""Generated captions for the demo's text-to-image part (``fae demo --t2i``) on Fashion-MNIST.

A caption says the class, in one of several phrasings, and one visual attribute measured from the
image:

* attribute: "dark" when the image's mean pixel intensity (uint8, over its 28x28 pixels) is at or
  below the median of its class (the lower middle value of that class's mean intensities over the
  captioned training images), else "light": each class splits in two halves, so guessing the
  attribute scores 50%. Generated images are judged by the same rule with the same thresholds;
* phrasing: each training image gets one of :data:`TRAIN_TEMPLATES`, drawn uniformly with a seeded
  ``numpy`` generator. :data:`HELD_OUT_TEMPLATES` never appear in training: the evaluation asks
  for classes and attributes in those words (the text encoder, all-MiniLM-L6-v2, has to carry the
  meaning across phrasings).

Evaluation prompts are balanced: prompt i asks for class i % 10 with attribute (i // 10) % 2, in
template (i // 20) % T.
"""
from __future__ import annotations

import re

import numpy as np
import torch

CLASS_WORDS = ("t-shirt", "pair of trousers", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag",
               "ankle boot")  # Fashion-MNIST's classes 0..9 (fae.data.fashion_mnist.CLASS_NAMES), as words
ATTRIBUTES = ("dark", "light")
TRAIN_TEMPLATES = ("a photo of a {attr} {name}", "{attr} {name}, product shot", "a {attr} {name} on a plain background",
                   "{name}, {attr}")
HELD_OUT_TEMPLATES = ("an image of a {attr} {name}", "catalogue picture: {attr} {name}", "a {name} in a {attr} tone")


def caption(template: str, label: int, attribute: int) -> str:
    """One caption: ``template`` filled with class ``label``'s words and the attribute's, with
    "a" before a vowel written "an"."""
    text = template.format(attr=ATTRIBUTES[attribute], name=CLASS_WORDS[label])
    return re.sub(r"\b([Aa]) (?=[aeiou])", r"\1n ", text)


def brightness(images: torch.Tensor) -> torch.Tensor:
    """Mean pixel intensity [n] (0..255) of uint8 images [n, C, H, W]."""
    return images.double().mean(dim=(1, 2, 3))


def class_thresholds(images: torch.Tensor, labels: torch.Tensor, num_classes: int = len(CLASS_WORDS)) -> torch.Tensor:
    """Per-class median brightness [num_classes] (the lower middle value); a class without images
    is an error."""
    values = brightness(images)
    out = torch.empty(num_classes, dtype=torch.float64)
    for c in range(num_classes):
        chosen = values[labels == c]
        if len(chosen) == 0:
            raise ValueError(f"no captioned training image of class {c}: raise latents.limit")
        out[c] = chosen.median()
    return out


def attributes(images: torch.Tensor, labels: torch.Tensor, thresholds: torch.Tensor) -> torch.Tensor:
    """Attribute index [n] (0 dark, 1 light) of each image against its class's threshold."""
    return (brightness(images) > thresholds[labels.long()]).long()


def training_captions(labels: torch.Tensor, attrs: torch.Tensor, seed: int) -> list[str]:
    """One caption per training image: a training phrasing drawn uniformly (seeded) per image."""
    rng = np.random.default_rng(seed)
    choice = rng.integers(len(TRAIN_TEMPLATES), size=len(labels))
    return [caption(TRAIN_TEMPLATES[int(t)], int(y), int(a)) for t, y, a in zip(choice, labels, attrs)]


def prompt_set(n: int, templates: tuple[str, ...]) -> tuple[list[str], torch.Tensor, torch.Tensor]:
    """Balanced evaluation prompts (module docstring): (prompts, classes [n], attributes [n])."""
    i = torch.arange(n)
    classes, attrs, which = i % len(CLASS_WORDS), (i // len(CLASS_WORDS)) % 2, (i // (2 * len(CLASS_WORDS))) % len(templates)
    prompts = [caption(templates[int(t)], int(y), int(a)) for t, y, a in zip(which, classes, attrs)]
    return prompts, classes, attrs
