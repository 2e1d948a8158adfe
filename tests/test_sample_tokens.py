"""``fae sample --pixel-decoder``: a generator trained on a backbone's raw tokens (``fae cache-latents
backbone.name=...``) is sampled, un-standardised with the cache's statistics its export records,
reshaped to tokens [B, N, D] and painted by the stage-Ib pixel decoder; a decoder of other tokens or
of another backbone is refused with one line naming both."""
from __future__ import annotations

import contextlib
import io
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from fae.autoencoder.pixel_decoder import PixelDecoder, PixelDecoderConfig
from fae.backbones.config import BackboneConfig
from fae.cli import main
from fae.config import SHIPPED_CONFIGS, yaml_dump
from fae.data.datasets import DataConfig
from fae.data.latent_cache import LatentCache
from fae.errors import LatentCacheError
from fae.evaluation.stats import read_sample_batch
from fae.experiment import latent_spaces
from fae.generation import Generator, GeneratorConfig
from fae.generation.decode import token_decoder
from fae.generation.samplers import SamplerConfig
from fae.generation.transport import TransportConfig
from fae.training.latents import LatentsConfig, cache_tokens
from tiny import GRID, TINY_GENERATOR, TINY_PIXEL_DECODER, TOKEN_DIM, perturbed, tiny_pixel_decoder

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py

NUM, CLASSES = 5, 3


def token_generator(cache: Path) -> Generator:
    """A tiny SiT on the raw tiny-vit tokens of ``cache`` (latents [64, 4, 4]), carrying the cache's
    statistics and identity as ``fae train generator`` would; weights perturbed so every layer
    (adaLN-Zero included) carries signal."""
    latents = LatentCache(cache)
    mean, std = latents.stats()
    torch.manual_seed(0)
    config = GeneratorConfig(**{**TINY_GENERATOR, "latent_channels": TOKEN_DIM}, num_classes=CLASSES)
    generator = Generator(config, TransportConfig(shift=0.4), mean, std, SamplerConfig(method="euler", steps=2),
                          latents.identity)
    perturbed(generator.model)  # the network only: the statistics stay the cache's
    return generator.eval()


@pytest.fixture(scope="module")
def exports(tmp_path_factory) -> dict[str, Path]:
    """A raw-token cache of tiny-vit, a generator export on it, and a stage-Ib-like run folder
    (``config.yaml`` naming tiny-vit beside ``export/``) holding a pixel decoder of its tokens."""
    root = tmp_path_factory.mktemp("tokens")
    cache = cache_tokens(LatentsConfig(backbone=BackboneConfig(name="tiny-vit"), out=str(root / "cache"),
                                       data=DataConfig(limit=6), stats_images=6, batch_size=6, progress=False))
    generator = token_generator(cache).save_pretrained(root / "generator" / "export")
    decoder_run = root / "pixel_decoder_ib"
    perturbed(tiny_pixel_decoder(seed=1)).save_pretrained(decoder_run / "export")
    (decoder_run / "config.yaml").write_text(yaml_dump({"backbone": {"name": "tiny-vit", "resolution": None}}))
    return {"cache": cache, "generator": generator, "decoder": decoder_run / "export"}


def sample_cli(generator: Path, decoder: Path, out: Path, *extra: str) -> tuple[int, str]:
    """``fae sample --pixel-decoder``; returns (exit code, stderr)."""
    err = io.StringIO()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
        code = main(["sample", "--generator", str(generator), "--pixel-decoder", str(decoder), "--num", str(NUM),
                     "--batch-size", "2", "--seed", "7", "--out", str(out), *extra])
    return code, err.getvalue()


def decoded_by_hand(exports: dict[str, Path]) -> np.ndarray:
    """The same samples without the library's decode path: the generator's network output on
    unit statistics, un-standardised with the cache's mean / std, reshaped to tokens [B, 16, 64]
    row-major, painted, mapped from [-1, 1] to uint8 (grey repeated to RGB), NHWC."""
    generator = Generator.from_pretrained(exports["generator"])
    mean, std = LatentCache(exports["cache"]).stats()
    assert torch.equal(generator.latent_mean, mean) and torch.equal(generator.latent_std, std)
    assert std.std() > 0 and mean.abs().max() > 0  # the statistics are not the identity
    generator.latent_mean.zero_(), generator.latent_std.fill_(1.0)
    labels = torch.arange(NUM) % CLASSES  # --classes default: every class, cycled
    standardised = generator.sample(range(NUM), labels, seed=7)  # [5, 64, 4, 4]
    z = standardised * std.view(1, -1, 1, 1) + mean.view(1, -1, 1, 1)
    tokens = torch.stack([z[:, :, i, j] for i in range(GRID[0]) for j in range(GRID[1])], dim=1)  # [5, 16, 64]
    decoder = PixelDecoder.from_pretrained(exports["decoder"])
    with torch.no_grad():
        images = ((decoder(tokens) + 1) / 2).clamp(0, 1).mul(255).round().to(torch.uint8)  # [5, 1, 28, 28]
    return images.permute(0, 2, 3, 1).repeat(1, 1, 1, 3).numpy()  # [5, 28, 28, 3]


def test_fae_sample_paints_the_generators_tokens_with_the_pixel_decoder(exports, tmp_path):
    out = tmp_path / "samples.npz"
    code, err = sample_cli(exports["generator"], exports["decoder"], out)
    assert code == 0, err
    images, labels = read_sample_batch(out)
    assert images.shape == (NUM, 28, 28, 3) and labels.tolist() == [0, 1, 2, 0, 1]
    expected = decoded_by_hand(exports)
    assert np.abs(images.astype(int) - expected.astype(int)).max() <= 1  # float round-off may flip a rounding
    assert images.std() > 5  # painted images, not a constant
    assert out.with_suffix(".png").is_file()


def test_a_decoder_of_other_tokens_is_refused_in_one_line(exports, tmp_path):
    other = PixelDecoder(PixelDecoderConfig(**TINY_PIXEL_DECODER), token_dim=32, grid=GRID)
    other = other.save_pretrained(tmp_path / "other")
    code, err = sample_cli(exports["generator"], other, tmp_path / "x.npz")
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert err.startswith("fae: error: ") and "latents [32, 4, 4]" in err and "latents [64, 4, 4]" in err
    assert str(other) in err and str(exports["generator"]) in err
    assert not (tmp_path / "x.npz").exists()


def test_a_decoder_of_another_backbone_is_refused_before_any_model_loads(exports, tmp_path):
    run = tmp_path / "pixel_decoder_ib"
    tiny_pixel_decoder().save_pretrained(run / "export")  # the same token shape ...
    (run / "config.yaml").write_text(yaml_dump({"backbone": {"name": "efficientnet-lite0", "resolution": 32}}))
    code, err = sample_cli(exports["generator"], run / "export", tmp_path / "x.npz")  # ... another backbone
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "raw tiny-vit tokens at 32 px" in err and "efficientnet-lite0 tokens at 32 px" in err


def test_an_fae_latent_generator_or_an_fae_export_is_refused(exports, tmp_path, tiny_fae_export):
    fae_latents = Generator(GeneratorConfig(**TINY_GENERATOR, num_classes=CLASSES)).save_pretrained(tmp_path / "g")
    code, err = sample_cli(fae_latents, exports["decoder"], tmp_path / "x.npz")
    assert code == 2 and "latents [4, 4, 4]" in err and "latents [64, 4, 4]" in err
    code, err = sample_cli(exports["generator"], tiny_fae_export, tmp_path / "x.npz")
    assert code == 2 and "not a 'fae-pixel-decoder' one" in err
    code, err = sample_cli(exports["generator"], exports["decoder"], tmp_path / "x.npz", "--fae", str(tiny_fae_export))
    assert code == 2 and "'fae'" in err and "'pixel_decoder'" in err and "both set" in err


def test_token_decoder_checks_the_shape_and_keeps_the_statistics():
    decoder = tiny_pixel_decoder()
    mean, std = torch.arange(64.0), torch.full((64,), 2.0)
    space = token_decoder(decoder, (64, 4, 4), mean, std)
    assert torch.equal(space.latent_mean, mean) and space.pixel_decoder is decoder
    z = torch.randn(2, 64, 4, 4)
    tokens = z.flatten(2).transpose(1, 2)  # [2, 16, 64]: token (i, j) is row i * 4 + j
    assert torch.equal(tokens[:, 1 * 4 + 2], z[:, :, 1, 2])
    with torch.no_grad():
        assert torch.allclose(space.decode(z), (decoder(tokens) + 1) / 2, atol=1e-6)
    with pytest.raises(LatentCacheError, match=r"paints tokens of width 64 on a 4x4 grid .* latents \[64, 8, 8\]"):
        token_decoder(decoder, (64, 8, 8), mean, std, "the cache")


def test_the_experiment_decodes_token_latents_through_the_same_function(exports, monkeypatch):
    """``fae experiment``'s tokens space: the stage-Ib export behind :func:`token_decoder`, with the
    arm's cache statistics; a plan of another latent shape is refused the same way."""
    monkeypatch.setattr(latent_spaces, "_export", lambda plan, section: exports["decoder"])
    plan = SimpleNamespace(latents=exports["cache"], latent_shape=(64, 4, 4))
    decoder, identifies = latent_spaces.TokenLatents().decoder(plan)
    assert identifies == exports["decoder"] / "model.safetensors"
    assert torch.equal(decoder.latent_mean, LatentCache(exports["cache"]).stats()[0])
    z = torch.randn(2, 64, 4, 4)
    with torch.no_grad():
        expected = (PixelDecoder.from_pretrained(exports["decoder"])(z.flatten(2).transpose(1, 2)) + 1) / 2
    assert torch.allclose(decoder.decode(z), expected, atol=1e-6)
    with pytest.raises(LatentCacheError, match=r"latents \[64, 2, 8\]"):
        latent_spaces.TokenLatents().decoder(SimpleNamespace(latents=exports["cache"], latent_shape=(64, 2, 8)))


def test_the_token_config_says_how_to_sample_it():
    header = (SHIPPED_CONFIGS / "imagenet256/sit_xl1_dinov2_tokens.yaml").read_text()
    assert "fae sample --generator runs/imagenet256/sit_xl1_dinov2_tokens/export --pixel-decoder" in header
    assert "cannot sample" not in header
