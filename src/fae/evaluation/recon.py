"""Reconstruction metrics of an FAE: features (cosine, relative L2) and pixels (PSNR, SSIM, rFID).

For each image: tokens ``x = backbone(image)``, ``z = encode(x)`` (posterior mean),
``x_hat = decode_features(z)``, ``image_hat = decode_features_to_pixels(x_hat)``.
* feature cosine: mean over tokens of ``cos(x_n, x_hat_n)``, then over images;
* feature relative L2: ``|x_hat - x| / |x|`` over all tokens of an image, then mean over images;
* PSNR / SSIM (:func:`image_scores`, the one rule every caller uses): the reconstruction quantised
  to uint8 (``fae.images.quantize``: what a saved PNG holds) vs the uint8 original;
* rFID: FID between the originals and the same uint8 reconstructions, both through the ADM
  Inception path (the paper's rFID 0.68 for FAE-32 is on ImageNet 256 px).
If the pixel decoder's output size differs from the stored images, the originals are resized to
it (bilinear, antialiased) before PSNR / SSIM / rFID; grayscale originals are repeated to RGB when
the decoder emits RGB.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from fae import distributed as dist
from fae.data.batches import iterate_batches
from fae.errors import DataError
from fae.evaluation.image_metrics import psnr_per_image, ssim_per_image
from fae.evaluation.scorer import FIDScorer
from fae.images import quantize


def feature_cosine(x: torch.Tensor, x_hat: torch.Tensor) -> torch.Tensor:
    """Mean per-token cosine similarity of each image [B] (tokens [B, N, D])."""
    return F.cosine_similarity(x_hat.double(), x.double(), dim=-1).mean(dim=1)


def feature_relative_l2(x: torch.Tensor, x_hat: torch.Tensor) -> torch.Tensor:
    """``|x_hat - x|_2 / |x|_2`` over all tokens of each image [B] (tokens [B, N, D])."""
    x, x_hat = x.double().flatten(1), x_hat.double().flatten(1)
    return (x_hat - x).norm(dim=1) / x.norm(dim=1).clamp_min(1e-12)


def feature_metrics(x: torch.Tensor, x_hat: torch.Tensor) -> dict[str, float]:
    """Batch means of :func:`feature_cosine` and :func:`feature_relative_l2`."""
    if x.shape != x_hat.shape:
        raise ValueError(f"features differ in shape: {tuple(x.shape)} vs {tuple(x_hat.shape)}")
    return {"feature_cosine": float(feature_cosine(x, x_hat).mean()),
            "feature_rel_l2": float(feature_relative_l2(x, x_hat).mean())}


def match_reference(images: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Originals uint8 [B, C, H, W] -> float [0, 1] with ``like``'s channels and size."""
    x = images.float() / 255.0
    if x.shape[1] != like.shape[1]:
        if x.shape[1] != 1:
            raise DataError(f"cannot compare {x.shape[1]}-channel images with {like.shape[1]}-channel "
                            "reconstructions")
        x = x.expand(-1, like.shape[1], -1, -1)
    if x.shape[-2:] != like.shape[-2:]:
        x = F.interpolate(x, size=like.shape[-2:], mode="bilinear", align_corners=False, antialias=True)
    return x.clamp(0, 1)


def image_scores(original: torch.Tensor, decoded: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per-image PSNR (dB) and SSIM [B] of decoded images against their originals.

    ``original``: uint8 [B, C, H, W]; ``decoded``: float in [0, 1] (quantised to uint8 here first)
    or uint8. Originals are matched to the decoded channels and size (:func:`match_reference`).
    """
    decoded = quantize(decoded).float() / 255.0
    reference = match_reference(original, decoded)
    return {"psnr": psnr_per_image(reference, decoded), "ssim": ssim_per_image(reference, decoded)}


def mean_image_scores(original: torch.Tensor, decoded: torch.Tensor, batch_size: int = 256) -> dict[str, float]:
    """Means over the set of :func:`image_scores` (computed in batches)."""
    sums = {"psnr": 0.0, "ssim": 0.0}
    for start in range(0, len(original), batch_size):
        scores = image_scores(original[start:start + batch_size], decoded[start:start + batch_size])
        for key, values in scores.items():
            sums[key] += float(values.double().sum())
    return {key: total / max(len(original), 1) for key, total in sums.items()}


class _Sums:
    """Per-image metric sums, reducible across ranks."""

    keys = ("feature_cosine", "feature_rel_l2", "psnr", "ssim")

    def __init__(self):
        self.values = torch.zeros(len(self.keys) + 1, dtype=torch.float64)  # + count

    def add(self, **per_image: torch.Tensor) -> None:
        for i, key in enumerate(self.keys):
            if key in per_image:
                self.values[i] += per_image[key].double().sum().cpu()
        self.values[-1] += next(iter(per_image.values())).shape[0]

    def means(self, keys: tuple[str, ...]) -> dict[str, float]:
        total, = dist.all_reduce_sums(self.values)
        count = max(float(total[-1]), 1.0)
        return {k: float(total[i]) / count for i, k in enumerate(self.keys) if k in keys}


@torch.no_grad()
def reconstruction_metrics(fae, dataset, *, batch_size: int = 32, pixels: bool = True,
                           rfid: bool = True, inception=None, sqrt_method: str = "sqrtm",
                           progress: bool = True) -> dict:
    """Feature (and, with ``pixels``, PSNR/SSIM/rFID) reconstruction metrics over ``dataset``.

    Args:
        fae: an ``fae.autoencoder.FAE`` (its backbone is loaded lazily or attached).
        dataset: items ``(uint8 image [C, H, W], label)``; sharded over ranks under torchrun.
        batch_size: images per step on each rank.
        pixels: also decode to pixels (needs a pixel decoder) for PSNR / SSIM / rFID.
        rfid: compute rFID (needs ``inception`` or loads it).
        inception: an ``InceptionFeatures`` network (default: loaded on the FAE's device).
        sqrt_method: FID matrix square root, "sqrtm" (checked, with fallback) or "eigh".
        progress: show a tqdm bar on rank 0.
    """
    if len(dataset) < 2:
        raise DataError(f"reconstruction metrics need at least 2 images, got {len(dataset)}")
    scorer = FIDScorer(inception, device=next(fae.parameters()).device, sqrt_method=sqrt_method)
    sums, real_feats, fake_feats = _Sums(), [], []
    shard = dist.shard_range(len(dataset))
    batches = iterate_batches(dataset, batch_size, shard, progress=progress and dist.is_main(), desc="recon")
    for images, _ in batches:
        tokens = fae.tokens_from(images)  # [B, N, D]
        tokens_hat = fae.decode_features(fae.encode(tokens))  # [B, N, D]
        batch = {"feature_cosine": feature_cosine(tokens, tokens_hat),
                 "feature_rel_l2": feature_relative_l2(tokens, tokens_hat)}
        if pixels:
            recon = quantize(fae.decode_features_to_pixels(tokens_hat).cpu())  # uint8 [B, C, H, W]
            batch.update(image_scores(images, recon))
            if rfid:  # this rank's shard, batch by batch: originals (at the decoder's size), reconstructions
                real_feats.append(scorer.embed(quantize(match_reference(images, recon))))
                fake_feats.append(scorer.embed(recon))
        sums.add(**batch)
    keys = _Sums.keys if pixels else _Sums.keys[:2]
    out = {"num_images": len(dataset), **sums.means(keys)}
    if pixels and rfid:  # [N, 2048] each, gathered in dataset order
        scorer.use_reference(dist.gather_rows(torch.cat(real_feats)).numpy())
        out["rfid"] = scorer.fid(dist.gather_rows(torch.cat(fake_feats)).numpy())
    return out
