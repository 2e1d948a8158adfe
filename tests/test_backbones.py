"""Backbone registry and adapters: real EfficientNet-Lite0 weights, seeded tiny ViT, and the
DINOv2 / SigLIP / SigLIP2 adapters checked against the HF models' own outputs (tiny random
models saved to a temp folder - no downloads)."""
from __future__ import annotations

import contextlib
import io

import pytest
import torch

from fae.backbones import get_info, list_backbones, load_backbone
from fae.backbones.extract import extract_tokens
from fae.errors import ConfigError, WeightsNotFoundError

TINY_HF = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.fixture(scope="module")
def effnet():
    return load_backbone("efficientnet-lite0")


def _photo(name: str) -> torch.Tensor:
    from skimage import data
    return torch.from_numpy(getattr(data, name)()).permute(2, 0, 1).unsqueeze(0)  # [1, 3, H, W] uint8


def test_efficientnet_real_imagenet_weights_classify_photos(effnet):
    # The real classifier head on our tokens' feature map: proof the ImageNet weights are loaded.
    cat = effnet.classify(_photo("chelsea")).argmax(-1).item()
    cup = effnet.classify(_photo("coffee")).argmax(-1).item()
    assert 281 <= cat <= 285, cat  # tabby / tiger cat / Persian / Siamese / Egyptian cat
    assert cup in (967, 968, 504), cup  # espresso / cup / coffee mug


def test_efficientnet_tokens_shape_grid_and_input_conventions(effnet):
    assert (effnet.dim, effnet.grid, effnet.resolution) == (1280, (7, 7), 224)
    tokens = effnet(torch.randint(0, 256, (1, 1, 28, 28), dtype=torch.uint8))
    assert tokens.shape == (1, 49, 1280) and tokens.dtype == torch.float32
    assert not tokens.requires_grad and not any(p.requires_grad for p in effnet.parameters())
    effnet.train()
    assert not effnet.training  # a frozen backbone stays in eval mode


def test_efficientnet_resolution_override_and_input_conventions():
    small = load_backbone("efficientnet-lite0", resolution=128)
    assert small.grid == (4, 4) and get_info("efficientnet-lite0", 128).grid == (4, 4)
    assert small(torch.zeros(1, 3, 50, 70, dtype=torch.uint8)).shape == (1, 16, 1280)
    gray = torch.randint(0, 256, (2, 1, 28, 28), dtype=torch.uint8)
    tokens = small(gray)
    # uint8, float in [0, 1] and grayscale-as-RGB are the same image
    torch.testing.assert_close(small(gray.float() / 255), tokens)
    torch.testing.assert_close(small(gray.expand(-1, 3, -1, -1)), tokens)
    # CPU micro-batching (a speed setting) does not change the result
    whole = load_backbone("efficientnet-lite0", resolution=64)
    whole.cpu_micro_batch = None
    many = torch.randint(0, 256, (10, 3, 64, 64), dtype=torch.uint8)
    torch.testing.assert_close(load_backbone("efficientnet-lite0", resolution=64)(many), whole(many),
                               rtol=1e-4, atol=1e-4)
    # a trainable layer may consume the tokens (no inference-tensor error in backward)
    layer = torch.nn.Linear(1280, 1)
    layer(tokens).sum().backward()
    assert layer.weight.grad is not None


def test_tiny_vit_is_seeded_and_leaves_global_rng_alone():
    state = torch.random.get_rng_state()
    a, b = load_backbone("tiny-vit"), load_backbone("tiny-vit")
    assert torch.equal(torch.random.get_rng_state(), state)
    x = torch.randint(0, 256, (3, 3, 32, 32), dtype=torch.uint8)
    ta = a(x)
    assert ta.shape == (3, 16, 64) and (a.dim, a.grid) == (64, (4, 4))
    assert torch.equal(ta, b(x))
    assert ta.std() > 0.1  # real features, not constants


def test_bf16_backbone_returns_float32_tokens_close_to_fp32():
    x = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8)
    full = load_backbone("tiny-vit")(x)
    half = load_backbone("tiny-vit", dtype=torch.bfloat16)(x)
    assert half.dtype == torch.float32
    assert (half - full).abs().mean() < 0.05 * full.abs().mean()


def test_registry_infos_without_weights():
    names = {i.name for i in list_backbones()}
    assert {"efficientnet-lite0", "tiny-vit", "dinov2-g14", "dinov2-g14-reg",
            "siglip2-so400m-patch16-256"} <= names
    widths = {"s": 384, "b": 768, "l": 1024, "g": 1536}
    for size, dim in widths.items():
        for suffix in ("", "-reg"):
            info = get_info(f"dinov2-{size}14{suffix}")
            assert (info.dim, info.grid, info.resolution) == (dim, (16, 16), 224)
    assert get_info("siglip2-so400m-patch16-256").grid == (16, 16)
    assert get_info("siglip2-so400m-patch16-256").dim == 1152
    assert get_info("siglip-so400m-patch14-384").grid == (27, 27)
    giant = get_info("siglip2-g-opt16-256")  # the paper's SigLIP2 FAE backbone
    assert (giant.dim, giant.grid, giant.resolution, giant.patch_size) == (1536, (16, 16), 256, 16)
    assert (giant.mean, giant.std, giant.interpolation) == ((0.5,) * 3, (0.5,) * 3, "bilinear")
    assert giant.source == "google/siglip2-giant-opt-patch16-256" and giant.family == "siglip"
    with pytest.raises(ConfigError, match="unknown backbone 'dinov3'"):
        get_info("dinov3")


def _save(model_cls, config, folder) -> torch.nn.Module:
    torch.manual_seed(0)
    model = model_cls(config).eval()
    model.save_pretrained(folder)
    return model


def _hf_cases(tmp_path):
    import transformers as tf
    return {
        "dinov2": (tf.Dinov2Model, tf.Dinov2Config(image_size=28, patch_size=14, **TINY_HF), 1, (2, 2)),
        "dinov2-reg": (tf.Dinov2WithRegistersModel, tf.Dinov2WithRegistersConfig(
            image_size=28, patch_size=14, num_register_tokens=4, **TINY_HF), 5, (2, 2)),
        "siglip": (tf.SiglipVisionModel, tf.SiglipVisionConfig(image_size=16, patch_size=4, **TINY_HF),
                   0, (4, 4)),
        "siglip2": (tf.Siglip2VisionModel, tf.Siglip2VisionConfig(patch_size=4, num_patches=16, **TINY_HF),
                    0, (4, 4)),
    }


def _hf_reference(name, model, pixels, p):
    """The HF model's own patch tokens for already-preprocessed pixels [B, 3, S, S]."""
    with torch.no_grad():
        if name != "siglip2":
            return model(pixel_values=pixels).last_hidden_state
        # NaFlex input: row-major patches, each flattened in (row, column, channel) order
        B, side = pixels.shape[0], pixels.shape[-1] // p
        patches = torch.stack([torch.stack([pixels[b, :, i * p:(i + 1) * p, j * p:(j + 1) * p]
                                            .permute(1, 2, 0).reshape(-1)
                                            for i in range(side) for j in range(side)])
                               for b in range(B)])  # [B, N, p*p*3]
        N = patches.shape[1]
        return model(pixel_values=patches, pixel_attention_mask=torch.ones(B, N, dtype=torch.long),
                     spatial_shapes=torch.tensor([[side, side]] * B)).last_hidden_state


@pytest.mark.parametrize("name", ["dinov2", "dinov2-reg", "siglip", "siglip2"])
def test_hf_adapters_return_the_models_patch_tokens(tmp_path, name):
    model_cls, config, prefix, grid = _hf_cases(tmp_path)[name]
    model = _save(model_cls, config, tmp_path / name)
    backbone = load_backbone(name, weights=str(tmp_path / name))
    assert backbone.grid == grid and backbone.dim == 32
    images = torch.randint(0, 256, (2, 3, 37, 45), dtype=torch.uint8)  # odd size: resize + crop
    pixels = backbone.preprocess(images)
    assert pixels.shape[-2:] == (backbone.resolution,) * 2
    expected = _hf_reference(name, model, pixels, config.patch_size)[:, prefix:]  # drop CLS/registers
    tokens = backbone(images)
    assert tokens.shape == (2, grid[0] * grid[1], 32)
    torch.testing.assert_close(tokens, expected, rtol=1e-5, atol=1e-5)


def test_full_siglip_checkpoint_loads_its_vision_tower(tmp_path):
    import transformers as tf
    text = dict(vocab_size=64, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                intermediate_size=64)
    config = tf.SiglipConfig(text_config=text, vision_config=dict(image_size=16, patch_size=4, **TINY_HF))
    full = _save(tf.SiglipModel, config, tmp_path / "full")
    backbone = load_backbone("hf", weights=str(tmp_path / "full"))
    images = torch.rand(2, 3, 16, 16)
    with torch.no_grad():
        expected = full.vision_model(pixel_values=backbone.preprocess(images)).last_hidden_state
    assert backbone.grid == (4, 4)
    torch.testing.assert_close(backbone(images), expected, rtol=1e-5, atol=1e-5)


def test_registry_name_with_wrong_weights_or_missing_folder(tmp_path, monkeypatch):
    import transformers as tf
    _save(tf.Dinov2Model, tf.Dinov2Config(image_size=28, patch_size=14, **TINY_HF), tmp_path / "d")
    with pytest.raises(WeightsNotFoundError, match="wrong shape.*width 32.*expects width 384"):
        load_backbone("dinov2-s14", weights=str(tmp_path / "d"))
    with pytest.raises(WeightsNotFoundError, match="wrong kind"):
        load_backbone("dinov2-s14-reg", weights=str(tmp_path / "d"))
    missing = tmp_path / "nowhere"
    with pytest.raises(WeightsNotFoundError, match=r"does not exist.*FAE_WEIGHTS_DINOV2_G14"):
        load_backbone("dinov2-g14", weights=str(missing))
    # the environment variable is consulted, and a bad one is named in the error
    monkeypatch.setenv("FAE_WEIGHTS_EFFICIENTNET_LITE0", str(missing))
    with pytest.raises(WeightsNotFoundError, match=r"\$FAE_WEIGHTS_EFFICIENTNET_LITE0.*does not exist"):
        load_backbone("efficientnet-lite0")
    monkeypatch.setenv("FAE_WEIGHTS_DINOV2_S14", str(tmp_path / "d"))
    with pytest.raises(WeightsNotFoundError, match="wrong shape"):
        load_backbone("dinov2-s14")
    # one folder for many backbones: $FAE_WEIGHTS_DIR/<name>/
    monkeypatch.delenv("FAE_WEIGHTS_DINOV2_S14")
    monkeypatch.setenv("FAE_WEIGHTS_DIR", str(tmp_path))
    (tmp_path / "d").rename(tmp_path / "dinov2-b14")
    with pytest.raises(WeightsNotFoundError, match=r"dinov2-b14' has token width 32"):
        load_backbone("dinov2-b14")


def test_hub_id_offline_fails_fast_with_instructions(monkeypatch, tmp_path):
    import time
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path))  # an empty cache
    start = time.perf_counter()
    with pytest.raises(WeightsNotFoundError, match=r"facebook/dinov2-giant.*FAE_WEIGHTS_DINOV2_G14"):
        load_backbone("dinov2-g14")
    assert time.perf_counter() - start < 10


def test_corrupt_efficientnet_weights_file(tmp_path):
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(WeightsNotFoundError, match="bad.pth"):
        load_backbone("efficientnet-lite0", weights=str(bad))
    wrong = tmp_path / "wrong.pth"
    torch.save({"_fc.weight": torch.zeros(3, 3)}, wrong)
    with pytest.raises(WeightsNotFoundError, match="wrong.pth.*do not fit EfficientNet-Lite0"):
        load_backbone("efficientnet-lite0", weights=str(wrong))


def test_extract_tokens_matches_direct_calls():
    from fae.data.fashion_mnist import FashionMNIST
    backbone = load_backbone("tiny-vit")
    data = FashionMNIST("test", limit=20)
    tokens, labels = extract_tokens(backbone, data, batch_size=8, progress=False)
    again, _ = extract_tokens(backbone, data, batch_size=16, progress=False)
    assert tokens.shape == (20, 16, 64)
    assert torch.equal(labels, data.labels)
    torch.testing.assert_close(tokens, backbone(data.images))
    assert torch.equal(tokens, again)  # the batch size does not change the tokens


def test_extract_tokens_of_chosen_indices():
    from fae.data.fashion_mnist import FashionMNIST
    backbone = load_backbone("tiny-vit")
    data = FashionMNIST("test", limit=20)
    tokens, labels = extract_tokens(backbone, data, batch_size=3, dtype=torch.float16, progress=False,
                                    indices=range(5, 12))
    assert tokens.dtype == torch.float16 and torch.equal(labels, data.labels[5:12])
    torch.testing.assert_close(tokens.float(), backbone(data.images[5:12]), rtol=2 ** -10, atol=1e-6)


def test_backbone_config_is_the_registry_entry_at_its_resolution():
    from fae.backbones import BackboneConfig
    from fae.config import from_dict

    cfg = from_dict(BackboneConfig, {"name": "efficientnet-lite0", "resolution": 128}, prefix="backbone")
    assert cfg.info() == get_info("efficientnet-lite0", 128) and cfg.info().grid == (4, 4)
    with pytest.raises(ConfigError, match="'backbone.name' is not set"):
        BackboneConfig().info()  # null: only stage II, which reads the FAE export's record
    assert "tiny-vit at 64 px -> tokens 8x8x64" in BackboneConfig("tiny-vit", 64).describe()
    tiny = BackboneConfig("tiny-vit").load()
    assert tiny.info == get_info("tiny-vit") and not tiny.training
    with pytest.raises(ConfigError, match="backbone.resolution"):
        from_dict(BackboneConfig, {"resolution": 0}, prefix="backbone")
    with pytest.raises(ConfigError, match="unknown config key 'backbone.size'"):
        from_dict(BackboneConfig, {"size": 3}, prefix="backbone")


def test_cli_prints_the_table():
    from fae.cli import main
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(["backbones"]) == 0
    lines = out.getvalue().splitlines()
    assert lines[0].split()[:4] == ["name", "dim", "grid", "input"]
    row = next(line for line in lines if line.startswith("efficientnet-lite0 "))
    assert row.split()[1:4] == ["1280", "7x7", "224px"] and "yes" in row
    row = next(line for line in lines if line.startswith("dinov2-g14 "))
    assert row.split()[1:5] == ["1536", "16x16", "224px", "no"]


def test_efficientnet_s16_tokens_are_the_same_network_stopped_at_stride_16():
    """efficientnet-lite0-s16: 112-d tokens on an 8x8 grid at 128 px, taken from the same weights:
    running the network's remaining blocks and head on them gives the efficientnet-lite0 tokens, and
    its ImageNet classifier is unchanged."""
    from fae.backbones.efficientnet import STRIDE16_BLOCKS

    s16 = load_backbone("efficientnet-lite0-s16", resolution=128)
    full = load_backbone("efficientnet-lite0", resolution=128)
    assert (s16.dim, s16.grid) == (112, (8, 8)) and get_info("efficientnet-lite0-s16").grid == (14, 14)
    images = torch.randint(0, 256, (3, 1, 28, 28), dtype=torch.uint8)
    tokens = s16(images)  # [3, 64, 112]
    assert tokens.shape == (3, 64, 112)
    x = tokens.transpose(1, 2).reshape(3, 112, 8, 8)
    net = full.net
    with torch.no_grad():
        for block in net._blocks[STRIDE16_BLOCKS:]:
            x = block(x, drop_connect_rate=None)
        rest = net._swish(net._bn1(net._conv_head(x))).flatten(2).transpose(1, 2)  # [3, 16, 1280]
    torch.testing.assert_close(rest, full(images), rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(s16.classify(images), full.classify(images))
