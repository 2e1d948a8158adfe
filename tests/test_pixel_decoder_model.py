"""The pixel decoder ViT: paper size, pixel layout, serialisation, and that it can fit images."""
from __future__ import annotations

import math

import pytest
import torch

from fae.autoencoder.pixel_decoder import PixelDecoder, PixelDecoderConfig
from fae.images import from_unit_range, to_unit_range
from fae.config import SHIPPED_CONFIGS, load_config
from fae.errors import CheckpointError, ConfigError
from tiny import tiny_backbone

PAPER_CONFIG = SHIPPED_CONFIGS / "imagenet256" / "pixel_decoder_vitl.yaml"
PAPER_PARAMS = 305.36e6  # paper: ViT-L pixel decoder, 16x16x1536 -> 256x256x3


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def tiny(out_channels: int = 1, image_size: int = 28, depth: int = 2) -> PixelDecoderConfig:
    return PixelDecoderConfig(depth=depth, dim=64, heads=4, out_channels=out_channels, image_size=image_size)


def n_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_paper_size_has_305m_parameters_on_meta():
    from fae.training.stages.pixel_decoder import CONFIG_CLASS, build_stage

    cfg = load_config(CONFIG_CLASS, PAPER_CONFIG)
    stage = build_stage(cfg)
    decoder = stage.build_models("meta")["pixel_decoder"]
    assert decoder.patch == (16, 16) and decoder.token_dim == 1536 and decoder.grid == (16, 16)
    assert n_params(decoder) == pytest.approx(PAPER_PARAMS, rel=0.03)
    assert all(p.is_meta for p in decoder.parameters())


def test_dry_run_cli_prints_the_paper_size(capsys, tmp_path):
    from fae.cli import main

    # the images are absent: the stage is described, the checklist names them, exit 2
    assert main(["train", "pixel-decoder", "--config", str(PAPER_CONFIG), "--dry-run",
                 f"data.root={tmp_path / 'imagenet'}"]) == 2
    out = capsys.readouterr().out
    assert "MISSING  data (train)" in out
    line = next(l for l in out.splitlines() if l.strip().startswith("pixel_decoder:"))
    count = int(line.split(":")[1].split("parameters")[0].replace(",", ""))
    assert count == pytest.approx(PAPER_PARAMS, rel=0.03)
    assert "perceptual loss: lpips" in out  # the choice is explicit in the run log


def test_each_token_paints_its_own_patch():
    model = PixelDecoder(tiny(out_channels=2), token_dim=64, grid=(4, 4))
    h, w, p, c = 4, 4, 7, 2
    x = torch.zeros(1, h * w, p * p * c)
    for t in range(h * w):  # head output of token t, laid out (ph, pw, C) = its value t
        x[0, t] = 1000 * t + torch.arange(p * p * c)  # exact integers in float32
    images = model.unpatchify(x)  # [1, C, 28, 28]
    for t in range(h * w):
        r, col = divmod(t, w)
        block = images[0, :, r * p:(r + 1) * p, col * p:(col + 1) * p]  # [C, p, p]
        assert torch.all(torch.div(block, 1000, rounding_mode="floor") == t)
        # within the block, the channel is the fastest index, then the column, then the row
        assert block[1, 0, 0] - block[0, 0, 0] == 1
        assert block[0, 0, 1] - block[0, 0, 0] == c
        assert block[0, 1, 0] - block[0, 0, 0] == c * p


def test_output_range_and_shape_checks():
    model = PixelDecoder(tiny(out_channels=3, image_size=32), token_dim=64, grid=(4, 4))
    tokens = 50 * torch.randn(3, 16, 64)
    out = model(tokens)
    assert out.shape == (3, 3, 32, 32) and out.min() >= -1 and out.max() <= 1
    assert model(tokens, clamp=False).abs().max() > 0  # unclamped path exists for training
    with pytest.raises(ValueError, match=r"\[B, 16, 64\]"):
        model(torch.randn(3, 9, 64))
    with pytest.raises(ConfigError, match="not divisible by the token grid"):
        PixelDecoder(tiny(image_size=30), token_dim=64, grid=(4, 4))


def test_save_and_load_round_trip_is_bit_exact(tmp_path):
    torch.manual_seed(0)
    model = PixelDecoder(tiny(), token_dim=64, grid=(4, 4))
    folder = model.save_pretrained(tmp_path / "export")
    loaded = PixelDecoder.from_pretrained(folder)
    assert loaded.export_config() == model.export_config()
    tokens = torch.randn(2, 16, 64)
    assert torch.equal(loaded(tokens), model(tokens))
    with pytest.raises(CheckpointError, match="is missing"):
        PixelDecoder.from_pretrained(tmp_path / "missing")


def psnr01(a: torch.Tensor, b: torch.Tensor) -> float:
    mse = (a - b).square().mean(dim=(1, 2, 3))
    return float((10 * torch.log10(1.0 / mse)).mean())


def fit_l1(model: PixelDecoder, tokens: torch.Tensor, target: torch.Tensor, steps: int = 300) -> None:
    """``steps`` full-batch Adam steps of L1 towards ``target`` images in [-1, 1]."""
    opt = torch.optim.Adam(model.parameters(), lr=4e-3)
    for _ in range(steps):
        loss = (model(tokens, clamp=False) - target).abs().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()


def test_overfits_a_small_batch_to_high_psnr():
    """8 Fashion-MNIST images from tiny-vit tokens, 300 Adam steps of L1.

    Bar: mean PSNR >= 27 dB (pixel RMSE under 4.5% of the range). Predicting the batch's mean
    image scores about 11 dB here; an untrained decoder about 7 dB. A decoder that cannot route
    each token to its patch, or whose unpatchify scrambles pixels, stays far below 20 dB.
    """
    from fae.data.fashion_mnist import FashionMNIST

    torch.manual_seed(0)
    images = FashionMNIST("train", limit=8).images  # [8, 1, 28, 28] uint8
    tokens = tiny_backbone()(images)  # [8, 16, 64]
    target = to_unit_range(images)
    model = PixelDecoder(tiny(), token_dim=64, grid=(4, 4))
    fit_l1(model, tokens, target)
    with torch.no_grad():
        decoded = from_unit_range(model(tokens))
    real = images.float() / 255
    baseline = psnr01(real.mean(0, keepdim=True).expand_as(real), real)
    score = psnr01(decoded, real)
    assert math.isfinite(score) and score >= 27.0, (score, baseline)
    assert score > baseline + 12


def test_seam_refiner_starts_as_identity_learns_and_round_trips(tmp_path):
    from dataclasses import replace

    torch.manual_seed(0)
    plain = PixelDecoder(tiny(), token_dim=16, grid=(4, 4))
    refined = PixelDecoder(replace(tiny(), refine_channels=8), token_dim=16, grid=(4, 4))
    refined.load_state_dict(plain.state_dict(), strict=False)  # same ViT, refiner as initialised
    tokens = torch.randn(3, 16, 16)
    assert torch.equal(refined(tokens), plain(tokens))  # zero-initialised output conv: identity

    target = torch.rand(3, 1, 28, 28) * 2 - 1
    opt = torch.optim.Adam(refined.refine.parameters(), lr=1e-2)
    losses = []
    for _ in range(30):
        loss = (refined(tokens, clamp=False) - target).abs().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]  # the refiner alone lowers the loss

    refined.save_pretrained(tmp_path / "dec")
    again = PixelDecoder.from_pretrained(tmp_path / "dec")
    assert again.config.refine_channels == 8 and torch.equal(again(tokens), refined(tokens))
    with pytest.raises(ConfigError, match="refine_channels"):
        PixelDecoder(replace(tiny(), refine_channels=-1), token_dim=16, grid=(4, 4))


def test_conv_head_overfits_mixes_patches_and_round_trips(tmp_path):
    """head=conv: the Linear paints a feature image and 3x3 convs at full resolution make the pixels,
    so (unlike the linear head) a patch's features reach pixels beyond it, 3 px at most; the decoder
    still overfits a small batch, and the export rebuilds it exactly."""
    from dataclasses import replace

    from fae.data.fashion_mnist import FashionMNIST

    torch.manual_seed(0)
    cfg = replace(tiny(), head="conv", head_channels=8, head_convs=2)
    model = PixelDecoder(cfg, token_dim=64, grid=(4, 4))
    painted = torch.randn(1, 8, 28, 28)  # the feature image the Linear paints (token 0: rows/cols 0-6)
    moved = painted.clone()
    moved[..., :7, :7] += 5.0
    with torch.no_grad():
        change = (model.conv_head(moved) - model.conv_head(painted)).abs()[0, 0]
    assert change[7:10, :10].sum() > 0  # reaches past its patch (three 3x3 convs: 3 px)
    assert change[10:, :].sum() == 0 and change[:, 10:].sum() == 0  # but no further

    images = FashionMNIST("train", limit=8).images
    feats = tiny_backbone()(images)  # [8, 16, 64]
    target = to_unit_range(images)
    fit_l1(model, feats, target)
    with torch.no_grad():
        score = psnr01(from_unit_range(model(feats)), images.float() / 255)
    assert score >= 25.0, score
    assert model.last_layer is model.conv_head.conv_out.weight  # the adaptive GAN weight's layer

    model.save_pretrained(tmp_path / "dec")
    again = PixelDecoder.from_pretrained(tmp_path / "dec")
    assert again.config.head == "conv" and torch.equal(again(feats), model(feats))
    with pytest.raises(ConfigError, match="pixel_decoder.head"):
        PixelDecoder(replace(tiny(), head="deconv"), token_dim=64, grid=(4, 4))


def test_output_size_keeps_each_patch_over_its_token_and_round_trips(tmp_path):
    """output_size: an 8x8 grid painting 32 px is resized to 28 px, and the patch of token (r, c)
    lands where that token looked, rows/cols [3.5 r, 3.5 r + 3.5), not at 4 r as a crop would put it."""
    from dataclasses import replace

    cfg = replace(tiny(image_size=32), output_size=28, head="conv", head_channels=4, head_convs=1)
    model = PixelDecoder(cfg, token_dim=16, grid=(8, 8))
    coords = torch.arange(28.0) + 0.5
    for r, c in [(0, 0), (3, 5), (7, 7)]:
        canvas = torch.zeros(1, 1, 32, 32)
        canvas[..., 4 * r:4 * r + 4, 4 * c:4 * c + 4] = 1.0
        out = model.resize_canvas(canvas)[0, 0]  # [28, 28]
        assert out.shape == (28, 28)
        centre = ((out.sum(1) * coords).sum() / out.sum(), (out.sum(0) * coords).sum() / out.sum())
        torch.testing.assert_close(torch.stack(centre), torch.tensor([3.5 * r + 1.75, 3.5 * c + 1.75]),
                                   atol=0.35, rtol=0)
    tokens = torch.randn(2, 64, 16)
    assert model(tokens).shape == (2, 1, 28, 28)
    model.save_pretrained(tmp_path / "dec")
    again = PixelDecoder.from_pretrained(tmp_path / "dec")
    assert again.config.output_size == 28 and torch.equal(again(tokens), model(tokens))
    with pytest.raises(ConfigError, match="pixel_decoder.output_size"):
        PixelDecoder(replace(cfg, output_size=0), token_dim=16, grid=(8, 8))
