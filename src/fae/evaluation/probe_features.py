"""Pooled features for linear probing: raw backbone tokens, FAE latents or FAE-reconstructed tokens.

Each "feature encoder" maps uint8 images [B, C, H, W] to pooled features [B, F]:
* raw: ``backbone(images)`` tokens [B, N, D] averaged over tokens -> [B, D];
* latent: FAE ``encode`` (posterior mean) z [B, c, h, w] averaged over positions -> [B, c];
* reconstructed: ``decode_features(encode(x))`` [B, N, D] averaged over tokens -> [B, D]
  (the paper's probe on FAE-reconstructed DINOv2 features).
Extraction is sharded over ranks under torchrun and gathered back in dataset order.
"""
from __future__ import annotations

import torch

from fae import distributed as dist


class BackboneFeatures:
    """Mean-pooled raw tokens of a frozen backbone.

    Args:
        backbone: a ``fae.backbones`` backbone.
    """

    def __init__(self, backbone):
        self.backbone = backbone
        self.name = backbone.info.name

    @torch.no_grad()
    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        return self.backbone(images).mean(dim=1)  # [B, N, D] -> [B, D]


class FAEFeatures:
    """Mean-pooled FAE latents or FAE-reconstructed tokens.

    Args:
        fae: an ``fae.autoencoder.FAE`` (its backbone is loaded lazily).
        kind: "raw" (the FAE's backbone tokens), "latent" or "reconstructed".
    """

    def __init__(self, fae, kind: str):
        self.fae, self.kind = fae, kind
        self.name = fae.config.backbone

    @torch.no_grad()
    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        tokens = self.fae.tokens_from(images)  # [B, N, D]
        if self.kind == "raw":
            return tokens.mean(dim=1)
        z = self.fae.encode(tokens)  # [B, c, h, w]
        if self.kind == "latent":
            return z.mean(dim=(2, 3))  # [B, c]
        return self.fae.decode_features(z).mean(dim=1)  # [B, N, D] -> [B, D]


def pooled_features(encoder, dataset, *, batch_size: int = 128, progress: bool = True,
                    desc: str = "features") -> tuple[torch.Tensor, torch.Tensor]:
    """(features [N, F] float32, labels [N] int64) of ``dataset`` (items ``(image, label)``)."""
    from tqdm.auto import tqdm

    shard = dist.shard_range(len(dataset))
    feats, labels = [], []
    bar = tqdm(total=len(shard), desc=desc, unit="img", disable=not (progress and dist.is_main()))
    for start in range(shard.start, shard.stop, batch_size):
        items = [dataset[i] for i in range(start, min(start + batch_size, shard.stop))]
        images = torch.stack([image for image, _ in items])  # [B, C, H, W] uint8
        feats.append(encoder(images).float().cpu())
        labels.append(torch.tensor([int(label) for _, label in items], dtype=torch.long))
        bar.update(len(items))
    bar.close()
    feats = torch.cat(feats) if feats else torch.empty(0, 0)
    labels = torch.cat(labels) if labels else torch.empty(0, dtype=torch.long)
    if dist.world_size() > 1:
        device = dist.default_device()
        feats = dist.all_gather_tensor(feats.to(device)).cpu()
        labels = dist.all_gather_tensor(labels.to(device)).cpu()
    return feats, labels
