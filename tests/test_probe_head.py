"""The zero-shot probe of the paper's Table 1: CLS / register tokens beside the patches, a head in
DINOv2's released file format, the FAE's extra_tokens modes, and ``fae eval probe --head`` against
brute-force computations (tiny random DINOv2 with registers saved to a temp folder: no downloads)."""
from __future__ import annotations

import json

import pytest
import torch

from fae.autoencoder import FAE, FAEConfig
from fae.autoencoder.model import fae_loss
from fae.backbones import get_info, load_backbone
from fae.backbones.base import BackboneOutput
from fae.cli import main
from fae.config import from_dict
from fae.data.fashion_mnist import FashionMNIST
from fae.errors import ConfigError, DataError
from fae.evaluation.linear_head import LinearHead, head_accuracy, head_input
from fae.evaluation.probe import linear_probe, train_linear_head
from fae.evaluation.probe_features import HeadFeatures

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py

TINY_HF = dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64)
TINY_MODEL = {"latent_channels": 4, "encoder": {"heads": 2, "head_dim": 16},
              "decoder": {"depth": 1, "width": 32, "heads": 2}}


@pytest.fixture(scope="module")
def dinov2_reg(tmp_path_factory):
    """(HF model, its folder, our adapter) of a tiny DINOv2 with 4 registers: 28 px -> 2x2 patches."""
    import transformers as tf

    folder = tmp_path_factory.mktemp("hf") / "dreg"
    torch.manual_seed(0)
    config = tf.Dinov2WithRegistersConfig(image_size=28, patch_size=14, num_register_tokens=4, **TINY_HF)
    model = tf.Dinov2WithRegistersModel(config).eval()
    model.save_pretrained(folder)
    return model, folder, load_backbone("dinov2-reg", weights=str(folder))


def _fae(backbone, mode: str, count: int | None = None) -> FAE:
    info = backbone.info
    torch.manual_seed(1)
    cfg = from_dict(FAEConfig, {"backbone": info.name, "resolution": info.resolution, "token_dim": info.dim,
                                "grid": list(info.grid), "extra_tokens": mode, "extra_count": count, **TINY_MODEL})
    return FAE(cfg).attach_backbone(backbone).eval()


def _images(n: int = 3) -> torch.Tensor:
    return torch.randint(0, 256, (n, 3, 30, 33), dtype=torch.uint8, generator=torch.Generator().manual_seed(2))


def test_dinov2_forward_all_gives_cls_and_registers_beside_unchanged_patches(dinov2_reg):
    model, _, backbone = dinov2_reg
    images = _images(2)
    out = backbone.forward_all(images)
    with torch.no_grad():
        seq = model(pixel_values=backbone.preprocess(images)).last_hidden_state  # [2, 1 + 4 + 4, 32]
    assert out.patches.shape == (2, 4, 32) and out.cls.shape == (2, 32) and out.registers.shape == (2, 4, 32)
    torch.testing.assert_close(out.cls, seq[:, 0])
    torch.testing.assert_close(out.registers, seq[:, 1:5])
    torch.testing.assert_close(out.patches, seq[:, 5:])
    assert torch.equal(out.patches, backbone(images))  # existing callers: unchanged patches
    assert torch.equal(out.extra(), torch.cat([out.cls[:, None], out.registers], 1))
    back = BackboneOutput.from_extra(out.patches, out.extra())
    assert torch.equal(back.cls, out.cls) and torch.equal(back.registers, out.registers)
    assert backbone.info.prefix_tokens == 5
    assert (get_info("dinov2-g14").prefix_tokens, get_info("dinov2-g14-reg").prefix_tokens) == (1, 5)
    tiny = load_backbone("tiny-vit")  # no CLS: None beside the same patches
    x = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8)
    plain = tiny.forward_all(x)
    assert plain.cls is None and plain.registers is None and torch.equal(plain.patches, tiny(x))


def test_released_head_file_format_round_trip_and_refusals(tmp_path):
    torch.manual_seed(0)
    linear = torch.nn.Linear(2 * 32, 10)  # the released heads: nn.Linear((1 + 1) * D, 1000)
    torch.save(linear.state_dict(), tmp_path / "dinov2_vitx14_reg4_linear_head.pth")
    head = LinearHead.load(tmp_path / "dinov2_vitx14_reg4_linear_head.pth")
    patches, cls = torch.randn(3, 5, 32), torch.randn(3, 32)
    with torch.no_grad():
        expected = linear(torch.cat([cls, patches.mean(1)], 1)).double()
    torch.testing.assert_close(head.logits(head_input(patches, cls, head)), expected)
    head.save(tmp_path / "again.pth")
    state = torch.load(tmp_path / "again.pth", weights_only=True)
    assert set(state) == {"weight", "bias"} and torch.equal(state["weight"], linear.weight.detach())
    mean_head = LinearHead(torch.randn(10, 32), torch.zeros(10))  # a head on pooled patches
    assert torch.equal(head_input(patches, None, mean_head), patches.mean(1))
    with pytest.raises(ConfigError, match="no CLS token"):
        head_input(patches, None, head)
    with pytest.raises(ConfigError, match="linear4"):
        head_input(patches, cls, LinearHead(torch.randn(10, 5 * 32), torch.zeros(10)))
    torch.save({**linear.state_dict(), "extra": torch.zeros(1)}, tmp_path / "keys.pth")
    with pytest.raises(DataError, match="keys.pth.*exactly the keys"):
        LinearHead.load(tmp_path / "keys.pth")
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(DataError, match="junk.pth"):
        LinearHead.load(tmp_path / "junk.pth")
    with pytest.raises(DataError, match=r"class indices in \[0, 10\)"):
        head_accuracy(head, torch.randn(2, 64), torch.tensor([0, 10]))


def test_trained_head_folds_the_standardisation_into_its_weights():
    gen = torch.Generator().manual_seed(0)
    labels = torch.arange(4).repeat_interleave(30)
    x = (torch.randn(4, 8, generator=gen)[labels] + 0.7 * torch.randn(120, 8, generator=gen)) * torch.logspace(-2, 2, 8)
    train_x, train_y, test_x, test_y = x[::2], labels[::2], x[1::2], labels[1::2]
    head = train_linear_head(train_x, train_y, epochs=30)
    mean, std = train_x.double().mean(0), train_x.double().std(0)
    plain = train_linear_head((train_x - mean) / std, train_y, epochs=30, standardize=False)
    # the folded head on raw features == the same fit on standardised features
    torch.testing.assert_close(head.logits(test_x), plain.logits((test_x - mean) / std), rtol=1e-6, atol=1e-6)
    assert head_accuracy(head, test_x, test_y)["top1"] == linear_probe(train_x, train_y, test_x, test_y,
                                                                       epochs=30)["top1"] > 0.9


def test_fae_extra_token_modes(dinov2_reg, tmp_path):
    _, _, backbone = dinov2_reg
    images = _images()
    passing, none = _fae(backbone, "pass_through", 5), _fae(backbone, "none")
    out = passing.outputs_from(images)
    with torch.no_grad():
        rec = passing.reconstruct(out)
        x_hat = passing.decode_features(passing.encode(out.patches))
        assert none.reconstruct(out).cls is None
        assert torch.equal(none.reconstruct(out, "pass_through").cls, out.cls)  # works on any FAE
    torch.testing.assert_close(rec.patches, x_hat)
    assert torch.equal(rec.cls, out.cls) and torch.equal(rec.registers, out.registers)
    assert not any("extra" in k for k in passing.state_dict())  # no weights added: old exports load

    fae = _fae(backbone, "reconstruct", 5)
    extra = out.extra()  # [3, 5, 32]
    fae.set_extra_stats(extra.mean((0, 1)), extra.std((0, 1)))
    with torch.no_grad():
        rec = fae.reconstruct(out)
        decoded = fae.decode_extra(fae.encode(out.patches))  # [3, 5, 32]
    assert rec.cls.shape == (3, 32) and rec.registers.shape == (3, 4, 32)
    torch.testing.assert_close(torch.cat([rec.cls[:, None], rec.registers], 1), decoded)
    fae.train()
    optimizer = torch.optim.Adam(fae.parameters(), lr=3e-3)
    losses = []
    for _ in range(40):
        loss, logs = fae_loss(fae(out.patches, sample=False, extra=extra), kl_weight=0.0)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(logs["rec_extra"]))
    assert losses[-1] < 0.5 * losses[0], losses  # the CLS / register L2 is trained
    fae.eval()
    again = FAE.from_pretrained(fae.save_pretrained(tmp_path / "export"), backbone=backbone)
    with torch.no_grad():
        torch.testing.assert_close(again.reconstruct(out).cls, fae.reconstruct(out).cls)
    with pytest.raises(ConfigError, match="does not reconstruct"):
        passing.decode_extra(torch.zeros(1, 4, 2, 2))
    with pytest.raises(ConfigError, match="no CLS or register tokens"):
        FAEConfig(backbone="tiny-vit", extra_tokens="pass_through").resolved()
    assert FAEConfig(backbone="dinov2-g14-reg", extra_tokens="pass_through").resolved().extra_count == 5


def test_head_features_match_brute_force_with_cls(dinov2_reg):
    model, _, backbone = dinov2_reg
    fae = _fae(backbone, "pass_through", 5)
    head = LinearHead(torch.randn(7, 64, generator=torch.Generator().manual_seed(3)), torch.randn(7))
    images = _images()
    got = HeadFeatures(head, fae=fae)(images)  # [3, 2 * 64]: raw, then pass_through (original CLS)
    with torch.no_grad():
        seq = model(pixel_values=backbone.preprocess(images)).last_hidden_state
        cls, patches = seq[:, 0], seq[:, 5:]
        recon = fae.decode_features(fae.encode(patches))
    torch.testing.assert_close(got[:, :64], torch.cat([cls, patches.mean(1)], 1), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got[:, 64:], torch.cat([cls, recon.mean(1)], 1), rtol=1e-5, atol=1e-5)
    raw_only = HeadFeatures(head, backbone=backbone)(images)
    torch.testing.assert_close(raw_only, got[:, :64])


def _brute_top1(head: torch.nn.Linear, features: torch.Tensor, labels: torch.Tensor) -> float:
    with torch.no_grad():
        return float((head(features).argmax(1) == labels).float().mean())


def test_eval_probe_head_cli_matches_brute_force(tmp_path, capsys, dinov2_reg):
    model, folder, backbone = dinov2_reg
    torch.manual_seed(4)
    linear = torch.nn.Linear(64, 10)  # a random head in the released format (CLS + mean patches)
    torch.save(linear.state_dict(), tmp_path / "head.pth")
    data = FashionMNIST("test", limit=12)
    common = ["data.split=test", "test_limit=12", "progress=false", "batch_size=5"]
    assert main(["eval", "probe", "--head", str(tmp_path / "head.pth"), "--backbone", "dinov2-reg",
                 f"weights={folder}", f"out={tmp_path / 'raw.json'}", *common]) == 0
    result = json.loads(capsys.readouterr().out.splitlines()[0])
    with torch.no_grad():
        seq = model(pixel_values=backbone.preprocess(data.images)).last_hidden_state
    features = torch.cat([seq[:, 0], seq[:, 5:].mean(1)], 1)
    assert result["top1_raw"] == pytest.approx(_brute_top1(linear, features, data.labels))
    assert result["num_test"] == 12 and result["head_input"] == 64

    # an FAE on tiny-vit (no CLS): a head on pooled patches, raw vs reconstructed
    tiny = load_backbone("tiny-vit")
    fae = _fae(tiny, "none")
    fae.save_pretrained(tmp_path / "fae")
    pooled = torch.nn.Linear(64, 10)
    torch.save(pooled.state_dict(), tmp_path / "pooled.pth")
    assert main(["eval", "probe", "--head", str(tmp_path / "pooled.pth"), "--fae", str(tmp_path / "fae"),
                 f"out={tmp_path / 'fae.json'}", *common]) == 0
    result = json.loads(capsys.readouterr().out.splitlines()[0])
    with torch.no_grad():
        tokens = tiny(data.images)
        recon = fae.decode_features(fae.encode(tokens))
    assert result["top1_raw"] == pytest.approx(_brute_top1(pooled, tokens.mean(1), data.labels))
    assert result["top1_reconstructed"] == pytest.approx(_brute_top1(pooled, recon.mean(1), data.labels))
    assert result["top1_gap"] == pytest.approx(result["top1_raw"] - result["top1_reconstructed"])

    # a head trained here and saved (save_head) scores the same as the probe that trained it
    train = ["--backbone", "tiny-vit", "train_limit=40", "test_limit=20", "epochs=10", "progress=false"]
    assert main(["eval", "probe", *train, f"save_head={tmp_path / 'mine.pth'}", f"out={tmp_path / 't.json'}"]) == 0
    trained = json.loads(capsys.readouterr().out.splitlines()[0])
    assert main(["eval", "probe", "--backbone", "tiny-vit", "--head", str(tmp_path / "mine.pth"),
                 "data.split=test", "test_limit=20", "progress=false", f"out={tmp_path / 'z.json'}"]) == 0
    assert json.loads(capsys.readouterr().out.splitlines()[0])["top1_raw"] == trained["top1"]
    torch.save(torch.nn.Linear(2 * 64, 10).state_dict(), tmp_path / "cls_head.pth")
    assert main(["eval", "probe", "--backbone", "tiny-vit", "--head", str(tmp_path / "cls_head.pth"),
                 "data.split=test", "test_limit=4", "progress=false", f"out={tmp_path / 'no.json'}"]) == 2
    assert "no CLS token" in capsys.readouterr().err
