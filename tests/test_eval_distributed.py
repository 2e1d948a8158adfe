"""Sharded evaluation under torchrun (2 ranks, gloo) equals the single-process result.

This file is also the worker: ``torchrun --nproc_per_node=2 tests/test_eval_distributed.py OUT``
computes the statistics on two ranks and rank 0 saves them to ``OUT/sharded.pt``. A fixed random
linear map stands in for InceptionV3 (the sharding, gathering and reduction are what is tested).
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch

from fae.evaluation.features import compute_inception_stats
from fae.evaluation.probe_features import pooled_features


class LinearNet:
    """images [B, 3, 8, 8] -> {"pool": [B, 2048], "spatial": [B, 2023]} through fixed random maps."""

    def __init__(self):
        gen = torch.Generator().manual_seed(0)
        self.pool = torch.randn(192, 2048, generator=gen, dtype=torch.float64)
        self.spatial = torch.randn(192, 2023, generator=gen, dtype=torch.float64)

    def __call__(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        x = images.double().flatten(1) / 255.0  # [B, 192]
        return {"pool": (x @ self.pool).float(), "spatial": (x @ self.spatial).float()}


class PoolEncoder:
    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        return images.float().mean(dim=(2, 3))  # [B, C]


def _inputs():
    images = torch.randint(0, 256, (11, 3, 8, 8), generator=torch.Generator().manual_seed(1), dtype=torch.uint8)
    dataset = [(images[i], i % 3) for i in range(11)]
    return images, dataset


def _compute() -> dict:
    images, dataset = _inputs()
    stats = compute_inception_stats(images, LinearNet(), batch_size=4, progress=False)
    feats, labels = pooled_features(PoolEncoder(), dataset, batch_size=4, progress=False)
    return {"mu": stats.mu, "sigma": stats.sigma, "mu_s": stats.mu_s, "sigma_s": stats.sigma_s,
            "count": stats.count, "pool_features": stats.pool_features, "probe": feats, "labels": labels}


def test_two_ranks_match_one_process(tmp_path):
    from launch import torchrun

    torchrun(Path(__file__), tmp_path)
    sharded = torch.load(tmp_path / "sharded.pt", weights_only=False)
    single = _compute()
    assert sharded["count"] == single["count"] == 11
    assert np.array_equal(sharded["pool_features"], single["pool_features"])  # gathered in dataset order
    for key in ("mu", "sigma", "mu_s", "sigma_s"):
        np.testing.assert_allclose(sharded[key], single[key], rtol=1e-9, atol=1e-9)
    assert torch.equal(sharded["probe"], single["probe"]) and torch.equal(sharded["labels"], single["labels"])


def test_float_images_are_scored_as_their_uint8_quantisation_and_datasets_batch_alike():
    from fae.evaluation.features import DatasetSource, TensorSource
    from fae.images import quantize

    floats = torch.rand(5, 3, 8, 8, generator=torch.Generator().manual_seed(2))
    assert torch.equal(TensorSource(floats).batch(1, 4), quantize(floats)[1:4])
    a = compute_inception_stats(floats, LinearNet(), batch_size=2, progress=False)
    b = compute_inception_stats(quantize(floats), LinearNet(), batch_size=3, progress=False)
    np.testing.assert_array_equal(a.pool_features, b.pool_features)
    images, dataset = _inputs()
    assert torch.equal(DatasetSource(dataset).batch(2, 9), images[2:9])


if __name__ == "__main__":
    # The worker is an entry point: it owns the process group (the library never starts one).
    from fae import distributed as dist

    with dist.process_group():
        assert dist.world_size() == 2
        result = _compute()
        if dist.is_main():
            torch.save(result, Path(sys.argv[1]) / "sharded.pt")
        dist.barrier()
