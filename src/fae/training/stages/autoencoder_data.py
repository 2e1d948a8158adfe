"""Data side of the autoencoder stage: token cache, feature/latent statistics, held-out metrics.

Kept apart from ``autoencoder.py`` (the stage contract) so each file holds one idea. Functions take
the stage (``AutoencoderStage``) for its config, backbone and cached tokens.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import replace
from pathlib import Path
from typing import Iterator

import torch
from torch.utils.data import DataLoader, Dataset

from fae.autoencoder.normalization import FeatureStats
from fae.autoencoder.vae import gaussian_kl
from fae.config import to_dict
from fae.errors import DataError
from fae import distributed as du


class TokenDataset(Dataset):
    """Cached backbone tokens: items ``(tokens [N, D] (stored dtype), label int)``.

    Args:
        tokens: [M, N, D] tensor (fp16 by default).
        labels: [M] int64 (-1 when unlabelled).
    """

    def __init__(self, tokens: torch.Tensor, labels: torch.Tensor):
        self.tokens, self.labels = tokens, labels

    def __len__(self) -> int:
        return self.tokens.shape[0]

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.tokens[i], int(self.labels[i])


# ---- the token cache -------------------------------------------------------------------------

def split_data_config(stage, split: str):
    """The data config of ``split``: held-out splits use ``eval.limit`` and never flip."""
    cfg = stage.config
    if split == cfg.data.split:
        return cfg.data
    return replace(cfg.data, split=split, limit=cfg.eval.limit, flip=False)


def cache_key(stage, split: str) -> str:
    """sha256 of everything the cached tokens depend on: data config, backbone, storage dtype."""
    cfg, fae_cfg = stage.config, stage.fae.config
    what = {"data": to_dict(split_data_config(stage, split)), "backbone": fae_cfg.backbone,
            "resolution": fae_cfg.resolution, "weights": cfg.backbone_weights,
            "dtype": cfg.cache_dtype, "format": 1}
    return hashlib.sha256(json.dumps(what, sort_keys=True).encode()).hexdigest()


def cache_path(stage, split: str) -> Path:
    cfg = stage.config
    folder = Path(cfg.token_cache_dir or Path(cfg.train.run_dir) / "token_cache")
    return folder / f"{split}-{cache_key(stage, split)[:16]}.safetensors"


def load_or_extract_tokens(stage, split: str) -> TokenDataset:
    """Tokens of ``split`` from the cache; rank 0 runs the backbone and writes it when missing."""
    from safetensors.torch import load_file

    path = cache_path(stage, split)
    if du.is_main() and not path.is_file():
        _extract_to(stage, split, path)
    du.barrier()
    try:
        data = load_file(str(path))
    except Exception as e:  # safetensors raises its own error types for damaged files
        raise DataError(f"token cache '{path}' is unreadable ({e}); delete it to rebuild") from None
    if du.is_main():
        print(f"token cache ({split}): {path} [{tuple(data['tokens'].shape)}]", flush=True)
    return TokenDataset(data["tokens"], data["labels"])


def _extract_to(stage, split: str, path: Path) -> None:
    from fae.backbones.extract import extract_tokens
    from fae.data.datasets import build_dataset
    from fae.io import atomic_save_safetensors

    cfg = stage.config
    dataset = build_dataset(split_data_config(stage, split))
    tokens, labels = extract_tokens(stage.backbone, dataset, batch_size=cfg.eval.batch_size,
                                    dtype=getattr(torch, cfg.cache_dtype), progress=cfg.train.progress,
                                    desc=f"tokens ({split})")
    atomic_save_safetensors({"tokens": tokens, "labels": labels}, path,
                            metadata={"key": cache_key(stage, split)})


# ---- batches of raw tokens -------------------------------------------------------------------

def _token_batches(stage, split: str, limit: int | None, shard: bool) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """(raw tokens [b, N, D] float32 on the FAE's device, labels [b]) over the first ``limit`` items."""
    cfg = stage.config
    if cfg.cache_tokens:
        dataset: Dataset = stage.tokens[split]
    else:
        from fae.data.datasets import build_dataset

        dataset = build_dataset(replace(split_data_config(stage, split), flip=False))
    n = len(dataset) if limit is None else min(limit, len(dataset))
    indices = du.shard_range(n) if shard else range(n)
    subset = torch.utils.data.Subset(dataset, list(indices))
    device = stage.fae.latent_mean.device
    for x, y in DataLoader(subset, batch_size=cfg.eval.batch_size, shuffle=False):
        yield stage.raw_tokens(x.to(device)), y


def held_out_batches(stage) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """This rank's shard of the held-out split."""
    cfg = stage.config
    return _token_batches(stage, cfg.eval.split, cfg.eval.limit, shard=True)


# ---- statistics --------------------------------------------------------------------------------

def feature_stats(stage) -> tuple[torch.Tensor, torch.Tensor]:
    """Feature statistics of this run: read from ``run_dir/feature_stats.safetensors`` when a
    previous start measured them for the same data and backbone, else measured and written."""
    from safetensors.torch import load_file

    from fae.io import atomic_save_safetensors

    path = Path(stage.config.train.run_dir) / "feature_stats.safetensors"
    key = hashlib.sha256(f"{cache_key(stage, stage.config.data.split)}/{stage.config.stats_images}"
                         .encode()).hexdigest()
    if path.is_file():
        from safetensors import safe_open

        with safe_open(str(path), "pt") as f:
            if (f.metadata() or {}).get("key") == key:
                data = load_file(str(path))
                return data["mean"], data["std"]
    mean, std = measure_feature_stats(stage)
    if du.is_main():
        atomic_save_safetensors({"mean": mean, "std": std}, path, metadata={"key": key})
    du.barrier()
    return mean, std


@torch.no_grad()
def measure_feature_stats(stage) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean/std [D] of the first ``stats_images`` training tokens (all ranks agree)."""
    stats = FeatureStats(stage.fae.config.token_dim)
    for tokens, _ in _token_batches(stage, stage.config.data.split, stage.config.stats_images, shard=True):
        stats.update(tokens)
    device = stage.fae.latent_mean.device
    total = du.all_reduce_sum(torch.stack([stats.total, stats.total_sq]).to(device)).cpu()
    stats.total, stats.total_sq = total[0], total[1]
    stats.count = int(du.all_reduce_sum(torch.tensor([stats.count], device=device)).item())
    return stats.mean_std()


@torch.no_grad()
def measure_latent_stats(stage, fae) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean/std [c] of the posterior mean over the first ``stats_images`` training
    items (rank 0 alone: called from ``export``)."""
    stats = FeatureStats(fae.config.latent_channels)
    for tokens, _ in _token_batches(stage, stage.config.data.split, stage.config.stats_images, shard=False):
        stats.update(fae.posterior(tokens).mean)  # [b, N, c]
    return stats.mean_std()


@torch.no_grad()
def feature_metrics(fae, batches, kl_weight: float) -> dict[str, float]:
    """Held-out reconstruction quality in the raw feature scale, averaged over every rank.

    cosine: mean over tokens of cos(x_hat, x); rel_l2: mean over images of ||x_hat - x|| / ||x||
    (Frobenius over the image's tokens); rec_mse / kl: the training loss terms (posterior mean
    decoded, no sampling); latent_*: per-channel statistics of the posterior mean.
    """
    c = fae.config.latent_channels
    sums = torch.zeros(6, dtype=torch.float64)  # cos, rel_l2, mse, kl, tokens, images
    latent = FeatureStats(c)
    for tokens, _ in batches:
        out = fae(tokens, sample=False)
        recon = fae.normalizer.denormalize(out["recon"].float())  # [b, N, D] raw scale
        cos = torch.nn.functional.cosine_similarity(recon, tokens, dim=-1)  # [b, N]
        rel = (recon - tokens).flatten(1).norm(dim=1) / tokens.flatten(1).norm(dim=1).clamp_min(1e-12)
        mse = (out["recon"] - out["target"]).square().mean(dim=(1, 2))  # [b]
        kl = gaussian_kl(out["mean"], out["logvar"]).mean(dim=(1, 2))  # [b]
        sums += torch.tensor([cos.sum(), rel.sum(), mse.sum(), kl.sum(), cos.numel(), rel.numel()],
                             dtype=torch.float64)
        latent.update(out["mean"])
    device = fae.latent_mean.device
    sums = du.all_reduce_sum(sums.to(device)).cpu()
    moments = du.all_reduce_sum(torch.stack([latent.total, latent.total_sq]).to(device)).cpu()
    latent.total, latent.total_sq = moments[0], moments[1]
    latent.count = int(du.all_reduce_sum(torch.tensor([latent.count], device=device)).item())
    if sums[5] == 0:
        raise DataError("the held-out split is empty (check eval.split / eval.limit)")
    mean, std = latent.mean_std()
    cos, rel, mse, kl = (sums[:4] / sums[[4, 5, 5, 5]]).tolist()
    return {"cosine": cos, "rel_l2": rel, "rec_mse": mse, "kl": kl, "loss": mse + kl_weight * kl,
            "latent_mean_abs": float(mean.abs().mean()), "latent_std_mean": float(std.mean()),
            "latent_std_min": float(std.min()), "latent_std_max": float(std.max())}


@torch.no_grad()
def linear_probe_metrics(stage, fae) -> dict[str, float]:
    """Paper protocol: a linear head trained on raw pooled train features, scored on raw and on
    FAE-reconstructed held-out features (the paper keeps the gap within ~1 point)."""
    from fae.evaluation.probe import linear_probe

    cfg = stage.config
    train = stage.tokens[cfg.data.split]
    n_train = len(train) if cfg.eval.probe_train_limit is None else min(cfg.eval.probe_train_limit, len(train))
    train_x = train.tokens[:n_train].float().mean(1)  # [M, D] pooled
    train_y = train.labels[:n_train]
    raw, recon, labels = [], [], []
    for tokens, y in _token_batches(stage, cfg.eval.split, cfg.eval.limit, shard=False):
        raw.append(tokens.mean(1).cpu())
        recon.append(fae.decode_features(fae.encode(tokens)).mean(1).cpu())  # [b, D]
        labels.append(y)
    test_y = torch.cat(labels)
    kwargs = {"epochs": cfg.eval.probe_epochs, "seed": 0}
    top_raw = linear_probe(train_x, train_y, torch.cat(raw), test_y, **kwargs)["top1"]
    top_recon = linear_probe(train_x, train_y, torch.cat(recon), test_y, **kwargs)["top1"]
    return {"probe_top1_raw": top_raw, "probe_top1_recon": top_recon, "probe_gap": top_raw - top_recon}
