"""A judge of decoded images: a small CNN trained on real pixels, then asked what generated or
reconstructed images show.

Why its own network: scoring decoded images with a head on the *backbone's* features asks the
backbone twice and hides what a person sees (a blurry patchwork can still carry the right
EfficientNet features). A classifier trained on the real training pixels, at the data's own size,
judges the pixels themselves, and its accuracy on the real test images is the ceiling to read the
other numbers against.

Like the linear probe (``probe.py``) it is an instrument, not a model stage: it trains here with
its own short loop (AdamW, one-cycle LR, random +-2 px shifts and horizontal flips), seeded, on the
CPU in about a minute for Fashion-MNIST's 60K images.

    uint8 [B, C, H, W] -> [-1, 1] -> 3 x (conv3x3 -> BatchNorm -> ReLU, max-pool between)
        -> global average pool -> Linear -> logits [B, classes]
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from fae.errors import CheckpointError, DataError
from fae.images import to_unit_range
from fae.io import atomic_torch_save
from fae.progress import show_progress


@dataclass
class ClassifierConfig:
    """Size of the judge and of its training run.

    Args:
        channels: image channels (1 for Fashion-MNIST).
        num_classes: labels 0 .. num_classes - 1.
        width: channels of the first conv; the next two double it.
        steps: optimiser steps.
        batch_size: images per step.
        lr: peak learning rate of the one-cycle schedule.
        shift: largest random translation in pixels (augmentation; 0 = off).
        flip: random horizontal flips (augmentation).
        seed: seeds the initial weights and the batches.
    """

    channels: int = 1
    num_classes: int = 10
    width: int = 32
    steps: int = 1500
    batch_size: int = 128
    lr: float = 3.0e-3
    shift: int = 2
    flip: bool = True
    seed: int = 0


class PixelClassifier(nn.Module):
    """uint8 (or [-1, 1] float) images [B, C, H, W] -> logits [B, num_classes]."""

    def __init__(self, config: ClassifierConfig):
        super().__init__()
        self.config = config
        w, layers, c_in = config.width, [], config.channels
        for i, c_out in enumerate((w, 2 * w, 4 * w)):
            if i:
                layers.append(nn.MaxPool2d(2))
            layers += [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU()]
            c_in = c_out
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(c_in, config.num_classes)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = to_unit_range(images) if images.dtype == torch.uint8 else images.float()
        x = self.features(x)  # [B, 4w, H/4, W/4]
        return self.head(x.mean(dim=(2, 3)))  # [B, classes]

    @torch.no_grad()
    def predict(self, images: torch.Tensor, batch_size: int = 500) -> torch.Tensor:
        """Class indices [B] (eval mode, in batches)."""
        self.eval()
        if len(images) == 0:
            return torch.empty(0, dtype=torch.long)
        return torch.cat([self(chunk).argmax(dim=1) for chunk in images.split(batch_size)])

    def accuracy(self, images: torch.Tensor, labels: torch.Tensor) -> float:
        """Share of ``images`` classified as ``labels``."""
        if len(images) != len(labels) or len(images) == 0:
            raise DataError(f"accuracy needs as many labels as images (>0), got {len(images)} images "
                            f"and {len(labels)} labels")
        return float((self.predict(images) == labels.to(torch.long)).double().mean())

    def save(self, path: str | Path) -> Path:
        return atomic_torch_save({"config": asdict(self.config), "state": self.state_dict()}, path)

    @classmethod
    def load(cls, path: str | Path) -> "PixelClassifier":
        try:
            saved = torch.load(path, map_location="cpu", weights_only=True)
            model = cls(ClassifierConfig(**saved["config"]))
            model.load_state_dict(saved["state"])
        except Exception as e:  # unreadable, foreign pickle, other keys or shapes
            raise CheckpointError(f"'{path}' is not a saved pixel classifier: {e}") from None
        return model.eval()


def augment(x: torch.Tensor, shift: int, flip: bool, generator: torch.Generator) -> torch.Tensor:
    """Random flips and one random translation per batch (padding with the background, -1)."""
    if flip:
        flipped = torch.rand(x.shape[0], 1, 1, 1, generator=generator) < 0.5
        x = torch.where(flipped, x.flip(3), x)
    if shift:
        h, w = x.shape[-2:]
        i, j = torch.randint(0, 2 * shift + 1, (2,), generator=generator).tolist()
        x = F.pad(x, (shift,) * 4, value=-1.0)[..., i:i + h, j:j + w]
    return x


def train_pixel_classifier(images: torch.Tensor, labels: torch.Tensor, config: ClassifierConfig | None = None,
                           progress: bool = True) -> PixelClassifier:
    """Train a :class:`PixelClassifier` on uint8 images [N, C, H, W] with integer labels [N]."""
    config = config or ClassifierConfig()
    if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[1] != config.channels:
        raise DataError(f"the pixel classifier trains on uint8 images [N, {config.channels}, H, W], got "
                        f"{images.dtype} {tuple(images.shape)}")
    if len(labels) != len(images) or len(images) < 2:
        raise DataError(f"the pixel classifier needs >= 2 images with one label each, got {len(images)} "
                        f"images and {len(labels)} labels")
    if int(labels.min()) < 0 or int(labels.max()) >= config.num_classes:
        raise DataError(f"labels must lie in 0..{config.num_classes - 1}, got {int(labels.min())}.."
                        f"{int(labels.max())}")
    torch.manual_seed(config.seed)
    generator = torch.Generator().manual_seed(config.seed)
    model = PixelClassifier(config).to(memory_format=torch.channels_last).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, config.lr, total_steps=config.steps)
    x_all, y_all = to_unit_range(images), labels.to(torch.long)
    bar = None
    if progress:
        bar = show_progress(total=config.steps, desc="pixel classifier", unit="step")
    for _ in range(config.steps):
        idx = torch.randint(0, len(x_all), (config.batch_size,), generator=generator)
        x = augment(x_all[idx], config.shift, config.flip, generator)
        loss = F.cross_entropy(model(x), y_all[idx])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{loss.item():.3f}", refresh=False)
    if bar is not None:
        bar.close()
    return model.eval()
