"""The pixel decoder's inputs: Gaussian noise scaled to the token norm (stage Ib), and a token cache.

Norm scale. We define the "norm scale" of the embeddings as the RMS of their entries,
``s = sqrt(mean_{n,t,d} x_{n,t,d}^2)``, measured over training images. Noise
``eps ~ N(0, (sigma * s)^2)`` per entry then has ``E||eps||^2 = sigma^2 * E||x||^2`` for a token x:
the noise norm is sigma times the RMS token norm (paper: sigma = 0.4 for DINOv2, "scaled to the
norm of the pretrained embeddings").
"""
from __future__ import annotations

import torch
from torch.utils.data import Dataset

from fae.errors import ConfigError


def token_rms(tokens: torch.Tensor) -> float:
    """The norm scale s = sqrt(mean x^2) over all entries of tokens [..., D]."""
    if tokens.numel() == 0:
        raise ConfigError("cannot measure the token scale: the training dataset is empty")
    return tokens.double().square().mean().sqrt().item()


@torch.no_grad()
def map_dataset(fn, dataset, num_images: int | None = None, batch_size: int = 64,
                dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """``fn(images [b, C, H, W] uint8) -> [b, ...]`` over the first ``num_images`` items, on the CPU."""
    n = len(dataset) if num_images is None else min(num_images, len(dataset))
    out = []
    for start in range(0, n, batch_size):
        images = torch.stack([dataset[i][0] for i in range(start, min(start + batch_size, n))])
        out.append(fn(images).to("cpu", dtype))
    return torch.cat(out) if out else torch.empty(0)


class CachedInputs(Dataset):
    """Items ``(image, label, decoder input [N, D])`` from a dataset and its precomputed inputs."""

    def __init__(self, base: Dataset, inputs: torch.Tensor):
        self.base, self.inputs = base, inputs

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i: int):
        image, label = self.base[i]
        return image, label, self.inputs[i]


def add_token_noise(tokens: torch.Tensor, sigma: float, scale: float, mode: str = "fixed") -> torch.Tensor:
    """tokens [B, N, D] + N(0, (sigma_b * scale)^2); sigma_b = sigma, or ~U[0, sigma] per sample."""
    if sigma == 0:
        return tokens
    std = torch.full((tokens.shape[0], 1, 1), sigma, device=tokens.device, dtype=tokens.dtype)
    if mode == "uniform":
        std = std * torch.rand_like(std)  # [B, 1, 1]
    return tokens + torch.randn_like(tokens) * std * scale
