"""FAE stage Ia model: sizes, encoder variants, VAE head, normalisation, export round trip."""
from __future__ import annotations

import json

import pytest
import torch

from fae.autoencoder import FAE, FAEConfig, FeatureNormalizer
from fae.stats import ChannelStats
from fae.autoencoder.vae import DiagonalGaussian
from fae.config import load_config
from fae.errors import BackboneMismatchError, CheckpointError, ConfigError
from tiny import TINY_FAE, tiny_backbone
from tiny import tiny_fae as shared_tiny_fae

TINY = {**TINY_FAE, "encoder": {**TINY_FAE["encoder"], "depth": 1}}  # depth: the transformer kind's


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def tiny_fae(**encoder) -> FAE:
    """The shared tiny FAE (tests/tiny.py) with ``TINY``'s encoder and the given encoder keys."""
    return shared_tiny_fae(encoder={**TINY["encoder"], **encoder})


def n_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_paper_sizes_on_meta_device():
    # Paper: encoder 38.17M, feature decoder 170.43M (DINOv2-g/14, 16x16x1536 tokens, c = 32).
    with torch.device("meta"):
        fae = FAE(FAEConfig(backbone="dinov2-g14"))
    assert fae.config.token_dim == 1536 and tuple(fae.config.grid) == (16, 16)
    assert n_params(fae.encoder) == 38_166_592  # the default layout: exact, see encoder.py
    assert n_params(fae.decoder) == pytest.approx(170.43e6, rel=0.02)
    assert n_params(fae.decoder) == 170_426_880  # exact: see feature_decoder.py
    with torch.device("meta"):  # the ablation encoders, by config alone
        deep = FAE(load_config(FAEConfig, None, ["encoder.kind=transformer"]))
        linear = FAE(load_config(FAEConfig, None, ["encoder.kind=linear"]))
    assert n_params(deep.encoder) == 6 * 28_330_496 + 1536 + 1536 * 64 + 64  # blocks, norm, head (no table)
    assert n_params(linear.encoder) == 1536 * 64 + 64


def test_both_attention_layouts_have_the_documented_counts():
    """App. D: 38.17M. The projected-skip layout without a table (the schema default) is exactly 38,166,592."""
    earlier = ["encoder.skip=identity", "encoder.activation_width=token", "encoder.pos_embed=true"]
    with torch.device("meta"):
        paper = FAE(load_config(FAEConfig, None, ["backbone=dinov2-g14"]))  # the schema default
        earlier = FAE(load_config(FAEConfig, None, ["backbone=dinov2-g14", *earlier]))
    assert n_params(paper.encoder) == 1536 * 4 * 6144 + 4 * 6144 + 6144 * 64 + 64 == 38_166_592
    assert n_params(earlier.encoder) == 1536 * 3 * 6144 + 3 * 6144 + 6144 * 1536 + 1536 \
        + 1536 * 64 + 64 + 256 * 1536 == 38_260_288
    assert abs(n_params(paper.encoder) / 38.17e6 - 1) < 1e-3


def test_projected_skip_layout_computes_the_merged_figure():
    """h = softmax(q k^T / sqrt(d)) v + W_s x at the attention width; out = W_2 gelu(h)."""
    torch.manual_seed(0)
    fae = tiny_fae(skip="projected", activation_width="attention", pos_embed=False)
    encoder, x = fae.encoder, torch.randn(3, 16, 64)  # tiny-vit: 16 tokens of width 64
    q, k, v = (encoder.attn.qkv(x).view(3, 16, 3, 2, 16)[:, :, i].transpose(1, 2) for i in range(3))
    weights = torch.softmax(q @ k.transpose(-1, -2) / 4.0, dim=-1)  # [3, 2, 16, 16], sqrt(16) = 4
    attended = (weights @ v).transpose(1, 2).reshape(3, 16, 32)  # [3, 16, 2 x 16]
    h = attended + x @ encoder.skip.weight.T + encoder.skip.bias  # [3, 16, 32]
    expected = torch.nn.functional.gelu(h, approximate="tanh") @ encoder.head.weight.T + encoder.head.bias
    assert encoder.pos_embed is None and encoder.head.in_features == 32
    torch.testing.assert_close(encoder(x), expected, rtol=1e-5, atol=1e-5)


def test_encoder_layout_keys_that_do_not_fit_are_refused():
    for skip, width in (("identity", "attention"), ("projected", "token")):
        with pytest.raises(ConfigError, match="'encoder.skip' = .* 'encoder.activation_width'"):
            load_config(FAEConfig, None, ["backbone=tiny-vit", f"encoder.skip={skip}",
                                          f"encoder.activation_width={width}"])


@pytest.mark.parametrize("overrides", [["encoder.kind=attention"], ["encoder.kind=linear"],
                                       ["encoder.kind=transformer"], ["encoder.kind=transformer", "encoder.width=32"],
                                       ["encoder.skip=projected", "encoder.activation_width=attention",
                                        "encoder.pos_embed=false"]])
def test_encoder_variants_by_config_alone(tmp_path, overrides):
    """Only `encoder.kind=...` changes; every variant encodes, decodes and learns."""
    path = tmp_path / "fae.yaml"
    path.write_text(json.dumps(TINY))
    cfg = load_config(FAEConfig, path, overrides)
    torch.manual_seed(0)
    fae = FAE(cfg)
    # tiny-vit: 4x4 grid of 64-d tokens; rank 4 per token, so c = 4 can carry them.
    tokens = torch.randn(8, 16, 4) @ torch.randn(4, 64) + 1
    z = fae.encode(tokens)
    assert z.shape == (8, 4, 4, 4)
    assert fae.decode_features(z).shape == (8, 16, 64)
    opt = torch.optim.Adam(fae.parameters(), lr=3e-3)
    losses = []
    for _ in range(60):
        out = fae(tokens, sample=False)
        loss = (out["recon"] - out["target"]).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.2 * losses[0]


def test_unknown_encoder_kind_names_the_key(tmp_path):
    with pytest.raises(ConfigError, match="encoder.kind"):
        load_config(FAEConfig, None, ["backbone=tiny-vit", "encoder.kind=mlp"])


def test_vae_head_mean_sample_and_kl():
    moments = torch.cat([torch.zeros(2, 3, 4), torch.zeros(2, 3, 4)], dim=-1)  # mu 0, log var 0
    post = DiagonalGaussian(moments)
    assert torch.equal(post.kl(), torch.zeros(2, 3, 4))  # KL(N(0,1) || N(0,1)) = 0
    moments = torch.cat([torch.full((1, 1, 1), 2.0), torch.full((1, 1, 1), -1.0)], dim=-1)
    kl = DiagonalGaussian(moments).kl().item()
    assert kl == pytest.approx(0.5 * (4.0 + torch.e ** -1 - 1.0 + 1.0))
    fae = tiny_fae()
    tokens = torch.randn(2, 16, 64)
    assert torch.equal(fae.encode(tokens), fae.encode(tokens))  # the mean: deterministic
    g1, g2 = torch.Generator().manual_seed(1), torch.Generator().manual_seed(2)
    assert not torch.equal(fae.encode(tokens, sample=True, generator=g1),
                           fae.encode(tokens, sample=True, generator=g2))


def test_feature_stats_stream_and_normalizer_inverts():
    x = torch.randn(10, 16, 8, dtype=torch.float64) * torch.arange(1, 9) + 5
    stats = ChannelStats(8)
    for chunk in x.split(3):
        stats.update(chunk)
    mean, std = stats.mean_std()
    flat = x.reshape(-1, 8)
    torch.testing.assert_close(mean, flat.mean(0).float())
    torch.testing.assert_close(std, flat.std(0, unbiased=False).float())
    norm = FeatureNormalizer(8)
    norm.set_stats(mean, std)
    xf = x.float()
    torch.testing.assert_close(norm.normalize(xf).reshape(-1, 8).std(0, unbiased=False), torch.ones(8))
    torch.testing.assert_close(norm.denormalize(norm.normalize(xf)), xf, rtol=1e-5, atol=1e-4)


def test_decode_features_returns_raw_scale():
    fae = tiny_fae()
    mean, std = torch.linspace(-3, 3, 64), torch.linspace(0.5, 4, 64)
    fae.set_feature_stats(mean, std)
    z = torch.randn(2, 4, 4, 4)
    torch.testing.assert_close(fae.decode_features(z), fae.decode_normalized(z) * std + mean)


def _trained_like(fae: FAE) -> FAE:
    fae.set_feature_stats(torch.randn(64), torch.rand(64) + 0.5)
    fae.set_latent_stats(torch.randn(4), torch.rand(4) + 0.5)
    return fae


def test_save_load_round_trip_is_bit_identical(tmp_path):
    fae = _trained_like(tiny_fae()).eval()
    folder = fae.save_pretrained(tmp_path / "fae")
    loaded = FAE.from_pretrained(folder)
    tokens = torch.randn(3, 16, 64) * 2
    z = fae.encode(tokens)
    assert torch.equal(loaded.encode(tokens), z)
    assert torch.equal(loaded.decode_features(z), fae.decode_features(z))
    assert torch.equal(loaded.latent_std, fae.latent_std)
    assert loaded.identity() == fae.identity()
    config = json.loads((folder / "config.json").read_text())
    assert config["backbone"] == {"name": "tiny-vit", "resolution": 32, "dim": 64, "grid": [4, 4]}
    assert config["identity"] == fae.identity()
    assert config["latent_stats"]["std"] == fae.latent_std.tolist()


def test_an_export_older_than_the_layout_keys_loads_with_its_own_layout(tmp_path):
    """Exports written before ``skip`` / ``activation_width`` / ``pos_embed`` existed had the identity
    skip, the activation at the token width and a position table: they load as that, not as today's default."""
    old = tiny_fae(skip="identity", activation_width="token", pos_embed=True).eval()
    folder = old.save_pretrained(tmp_path / "old")
    config = json.loads((folder / "config.json").read_text())
    for key in ("skip", "activation_width", "pos_embed"):
        del config["config"]["encoder"][key]
    (folder / "config.json").write_text(json.dumps(config))
    loaded = FAE.from_pretrained(folder)
    assert loaded.encoder.skip is None and loaded.encoder.pos_embed is not None
    tokens = torch.randn(2, 16, 64)
    assert torch.equal(loaded.encode(tokens), old.encode(tokens))
    assert tiny_fae().encoder.skip is not None  # today's default is the projected skip


def test_identity_tracks_the_latent_space_only(tmp_path):
    fae = tiny_fae()
    before = fae.identity()
    fae.set_latent_stats(torch.zeros(4), torch.full((4,), 2.0))
    assert fae.identity() == before  # latent statistics do not change the latent space
    with torch.no_grad():
        fae.encoder.head.bias[0] += 1e-3
    assert fae.identity() != before


def test_mismatched_backbone_is_refused(tmp_path):
    from fae.backbones import load_backbone

    fae = tiny_fae()
    folder = fae.save_pretrained(tmp_path / "fae")
    other = load_backbone("tiny-vit", resolution=64)  # same network, other grid (8x8)
    with pytest.raises(BackboneMismatchError, match="tiny-vit.*32 px.*64 px"):
        FAE.from_pretrained(folder, backbone=other)
    with pytest.raises(BackboneMismatchError, match=r"expects tokens \[B, 16, 64\]"):
        fae.encode(torch.randn(1, 16, 1280))
    good = FAE.from_pretrained(folder, backbone=tiny_backbone())
    images = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8)
    assert torch.equal(good.encode(images), fae.encode(images))  # lazy registry load == attached


def test_corrupt_or_foreign_export_is_refused(tmp_path):
    fae = tiny_fae()
    folder = fae.save_pretrained(tmp_path / "fae")
    config = json.loads((folder / "config.json").read_text())
    config["identity"] = "0" * 64
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="identity"):
        FAE.from_pretrained(folder)
    with pytest.raises(CheckpointError, match="'config.json' is missing"):
        FAE.from_pretrained(tmp_path / "missing")


def test_pixel_decoder_travels_inside_the_export(tmp_path):
    from fae.autoencoder.pixel_decoder import PixelDecoder, PixelDecoderConfig

    fae = tiny_fae()
    with pytest.raises(CheckpointError, match="no pixel decoder"):
        fae.decode(torch.randn(1, 4, 4, 4))
    pixel_cfg = PixelDecoderConfig(depth=1, dim=32, heads=2, out_channels=3, image_size=32)
    fae.set_pixel_decoder(PixelDecoder(pixel_cfg, 64, (4, 4))).eval()
    z = torch.randn(2, 4, 4, 4)
    images = fae.decode(z)
    assert images.shape == (2, 3, 32, 32) and images.min() >= 0 and images.max() <= 1
    loaded = FAE.from_pretrained(fae.save_pretrained(tmp_path / "fae"))
    assert torch.equal(loaded.decode(z), images)
    with pytest.raises(BackboneMismatchError, match="width 1280"):
        fae.set_pixel_decoder(PixelDecoder(pixel_cfg, 1280, (4, 4)))
