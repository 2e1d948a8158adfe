"""The pixel-decoder stage: noise scale, GAN phases, stage-II inputs and backbone, and stage Ib -> II
through the training engine.

Everything runs on tiny-vit (4x4 tokens of width 64) and 28 px Fashion-MNIST images.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch

from fae.autoencoder.noise import add_token_noise, token_rms
from fae.config import SHIPPED_CONFIGS, from_dict
from fae.errors import ConfigError
from fae.training.stages.pixel_decoder import CONFIG_CLASS, build_stage
from tiny import tiny_fae


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def tiny_config(run_dir: Path, **overrides) -> "CONFIG_CLASS":
    data = {
        "backbone": {"name": "tiny-vit"},
        "data": {"name": "fashion-mnist", "limit": 64},
        "pixel_decoder": {"depth": 1, "dim": 32, "heads": 2, "out_channels": 1, "image_size": 28},
        "noise": {"sigma": 0.4, "scale_images": 32},
        "loss": {"perceptual": "none", "gan_weight": 0.1, "gan_start_step": 0},
        "discriminator": {"channels": 8, "layers": 2, "groups": 4},
        "eval": {"limit": 16, "batch_size": 16, "grid_images": 4},
        "train": {"run_dir": str(run_dir), "steps": 6, "batch_size": 8, "log_every": 3,
                  "ckpt_every": 0, "progress": False, "tensorboard": False, "ema_decay": None,
                  "optim": {"lr": 1e-3}},
    }
    for key, value in overrides.items():
        node = data
        *path, last = key.split(".")
        for part in path:
            node = node.setdefault(part, {})
        node[last] = value
    return from_dict(CONFIG_CLASS, data)


def sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def test_noise_has_the_configured_scale_relative_to_the_token_norm(tmp_path):
    stage = build_stage(tiny_config(tmp_path, **{"noise.sigma": 0.4}))
    stage.build_models("cpu")
    stage.setup(torch.device("cpu"))
    images = stage.train_dataset().images[:32]
    tokens = 3.7 * stage.backbone(images)  # a backbone with a non-unit feature scale
    assert stage.token_scale == pytest.approx(token_rms(stage.backbone(images)), rel=1e-6)
    scale = token_rms(tokens)
    torch.manual_seed(0)
    for mode, expected in (("fixed", 0.4), ("uniform", 0.4 / 3 ** 0.5)):  # E[U(0,s)^2] = s^2 / 3
        noise = add_token_noise(tokens, 0.4, scale, mode) - tokens  # [32, 16, 64]
        # measured: RMS noise norm / RMS token norm
        ratio = noise.norm(dim=-1).square().mean().sqrt() / tokens.norm(dim=-1).square().mean().sqrt()
        assert ratio.item() == pytest.approx(expected, rel=0.08 if mode == "uniform" else 0.02)
    # the stage adds the same kind of noise to the batches it trains on
    batch = (images, torch.zeros(32))
    noisy = stage.input_tokens(batch) - stage.backbone(images)
    ratio = noisy.norm(dim=-1).square().mean().sqrt() / stage.backbone(images).norm(dim=-1).square().mean().sqrt()
    assert ratio.item() == pytest.approx(0.4, rel=0.02)


def test_decoder_and_discriminator_losses_update_their_own_parameters_only(tmp_path):
    # perceptual=backbone: the feature-matching loss backpropagates through the frozen backbone
    stage = build_stage(tiny_config(tmp_path, **{"loss.perceptual": "backbone"}))
    models = stage.build_models("cpu")
    stage.setup(torch.device("cpu"))
    images = stage.train_dataset().images[:8]
    batch = [images, torch.zeros(8, dtype=torch.long)]
    same = stage.perceptual(images.float() / 127.5 - 1, images.float() / 127.5 - 1)
    assert torch.allclose(same, torch.zeros(8), atol=1e-6)
    everything = [p for m in models.values() for p in m.parameters()]
    assert [p.name for p in stage.phases()] == ["decoder", "discriminator"]
    for phase, own in (("decoder", "pixel_decoder"), ("discriminator", "discriminator")):
        # all parameters require grad and one optimiser holds them all: only the phase's own move
        before = {n: [p.detach().clone() for p in m.parameters()] for n, m in models.items()}
        opt = torch.optim.SGD(everything, lr=0.1)
        opt.zero_grad(set_to_none=True)
        loss, logs = stage.loss(phase, batch, models, step=0)
        loss.backward()
        opt.step()
        for name, module in models.items():
            moved = any(not torch.equal(a, p) for a, p in zip(before[name], module.parameters()))
            assert moved == (name == own), (phase, name)
            grads = [p.grad for p in module.parameters()]
            assert all(g is None for g in grads) == (name != own), (phase, name)
    assert all(p.grad is None for p in stage.backbone.parameters())
    assert {"g_loss", "gan_adaptive_weight", "l1", "perceptual"} <= set(stage.loss("decoder", batch, models, 0)[1])
    assert stage.loss("decoder", batch, models, 0)[1]["gan_adaptive_weight"] > 0


def tiny_fae_export(folder: Path) -> Path:
    """The shared tiny FAE (tests/tiny.py) without feature normalisation, as a stage-Ia export."""
    return tiny_fae(seed=1, feature_norm="none").save_pretrained(folder)


def tiny_ib_export(folder: Path) -> Path:
    """An untrained stage-Ib decoder of ``tiny_config``'s architecture (a valid ``init_from``)."""
    from fae.autoencoder.pixel_decoder import PixelDecoder

    return PixelDecoder(tiny_config(folder).pixel_decoder, 64, (4, 4)).save_pretrained(folder)


def test_stage_ii_reads_the_backbone_from_the_fae_and_refuses_another(tmp_path):
    fae_dir, ib_dir = tiny_fae_export(tmp_path / "fae"), tiny_ib_export(tmp_path / "ib")
    ii = dict(stage="finetune", fae=str(fae_dir), init_from=str(ib_dir))
    stage = build_stage(tiny_config(tmp_path / "ii", backbone={}, **ii))
    assert (stage.backbone_config.name, stage.info.resolution, stage.info.grid) == ("tiny-vit", 32, (4, 4))
    agreeing = build_stage(tiny_config(tmp_path / "ii", backbone={"name": "tiny-vit", "weights": None}, **ii))
    assert agreeing.info == stage.info  # a section that agrees is fine (it may name the weights)
    with pytest.raises(ConfigError, match=r"sets \{'resolution': 64\}.*trained on 'tiny-vit' at 32 px"):
        build_stage(tiny_config(tmp_path / "ii", backbone={"name": "tiny-vit", "resolution": 64}, **ii))
    with pytest.raises(ConfigError, match=r"sets \{'name': 'efficientnet-lite0'\}.*trained on 'tiny-vit'"):
        build_stage(tiny_config(tmp_path / "ii", backbone={"name": "efficientnet-lite0"}, **ii))
    with pytest.raises(ConfigError, match="stage=noisy-features needs config key 'backbone.name'"):
        tiny_config(tmp_path / "ib", backbone={})


@pytest.mark.parametrize("cache", [False, True])
def test_stage_ii_inputs_are_exactly_x_hat_without_noise(tmp_path, cache):
    """noise.sigma null (the schema default) in stage II = no noise: the decoder sees x_hat itself."""
    from fae.backbones.token_cache import TokenCache

    fae_dir, ib_dir = tiny_fae_export(tmp_path / "fae"), tiny_ib_export(tmp_path / "ib")
    cfg = tiny_config(tmp_path / "ii", stage="finetune", fae=str(fae_dir), init_from=str(ib_dir), backbone={},
                      cache_tokens=cache, **{"noise.sigma": None, "eval.batch_size": 64})
    assert cfg.noise.sigma == 0.0  # resolved, so the run's saved config records it
    stage = build_stage(cfg)
    assert stage.describe()["noise"] == "none: the decoder sees its clean inputs exactly (x_hat)"
    stage.build_models("cpu")
    stage.setup(torch.device("cpu"))
    dataset = stage.train_dataset()
    items = [dataset[i] for i in range(64)]
    batch = [torch.stack([item[0] for item in items]), torch.tensor([item[1] for item in items])]
    if cache:  # x_hat of the cached (fp16) tokens, computed once at set-up
        batch.append(torch.stack([item[2] for item in items]))
        tokens = TokenCache(tmp_path / "ii" / "token_cache", stage.backbone).tokens(cfg.data, progress=False)[0]
    else:  # x_hat of the backbone's tokens, computed in the step
        tokens = stage.backbone(batch[0])
    expected = stage.fae.decode_features(stage.fae.encode(tokens.float()))  # [64, 16, 64]
    assert torch.equal(stage.input_tokens(batch), expected)


def test_noise_defaults_by_stage_and_explicit_noise_is_kept(tmp_path):
    fae_dir, ib_dir = tiny_fae_export(tmp_path / "fae"), tiny_ib_export(tmp_path / "ib")
    ii = dict(stage="finetune", fae=str(fae_dir), init_from=str(ib_dir), backbone={})
    assert tiny_config(tmp_path / "ib", **{"noise.sigma": None}).noise.sigma == 0.4  # Ib: the paper's sigma
    assert tiny_config(tmp_path / "ii", **ii, **{"noise.sigma": None}).noise.sigma == 0.0
    stage = build_stage(tiny_config(tmp_path / "ii", **ii, **{"noise.sigma": 0.4, "noise.scale": 1.0}))
    stage.build_models("cpu")
    stage.setup(torch.device("cpu"))
    images = stage.train_dataset().images[:16]
    x_hat = stage.clean_inputs(images)  # [16, 16, 64]
    noisy = stage.input_tokens([images, torch.zeros(16, dtype=torch.long)])
    assert (noisy - x_hat).square().mean().sqrt().item() == pytest.approx(0.4, rel=0.1)  # sigma x scale 1


def test_imagenet_stage_ii_config_is_noise_free_and_otherwise_the_stage_ib_recipe():
    from fae.config import load_config, to_dict

    root = SHIPPED_CONFIGS / "imagenet256"
    ib = to_dict(load_config(CONFIG_CLASS, root / "pixel_decoder_vitl.yaml"))
    ii = to_dict(load_config(CONFIG_CLASS, root / "pixel_decoder_vitl_ii.yaml"))
    assert (ib["stage"], ib["noise"]["sigma"]) == ("noisy-features", 0.4)
    assert (ii["stage"], ii["noise"]["sigma"]) == ("finetune", 0.0)
    assert ii["fae"] and ii["init_from"] and ii["train"]["run_dir"] != ib["train"]["run_dir"]
    for key in ("backbone", "data", "pixel_decoder", "loss", "discriminator", "disc_optim", "eval"):
        assert ii[key] == ib[key], key
    assert {k: v for k, v in ii["train"].items() if k != "run_dir"} == \
        {k: v for k, v in ib["train"].items() if k != "run_dir"}
    # the old README path (the Ib file + stage=finetune) with the noise key left to its stage default
    assert load_config(CONFIG_CLASS, root / "pixel_decoder_vitl.yaml",
                       ["stage=finetune", "fae=f", "init_from=i", "noise.sigma=null"]).noise.sigma == 0.0


def test_held_out_scores_use_the_uint8_rule_and_rfid_is_zero_for_the_originals(tmp_path):
    from PIL import Image

    from fae.data.fashion_mnist import FashionMNIST
    from fae.evaluation.recon import mean_image_scores
    from fae.training.stages.pixel_decoder_heldout import HeldOut

    data = FashionMNIST("test", limit=5)  # few images: every one costs three Inception passes
    held_out = HeldOut(data, torch.zeros(5, 16, 64), batch_size=3)
    exact = data.images.float() / 255
    noisy = (exact + 0.3 * torch.rand(5, 1, 28, 28, generator=torch.Generator().manual_seed(0))).clamp(0, 1)
    scores = held_out.scores({"same": exact, "noisy": noisy}, rfid=True)
    assert scores["same/rfid"] == pytest.approx(0.0, abs=1e-6) and scores["noisy/rfid"] > 1.0
    assert scores["same/psnr"] > scores["noisy/psnr"] + 20 and scores["same/ssim"] == pytest.approx(1.0)
    assert scores["noisy/psnr"] == pytest.approx(mean_image_scores(data.images, noisy)["psnr"])
    grid = held_out.save_grid({"same": exact, "noisy": noisy}, tmp_path / "grid.png", rows=4)
    assert Image.open(grid).size[0] > 3 * 28  # original | same | noisy


@pytest.mark.slow
def test_stage_ib_then_ii_through_the_engine(tmp_path):
    from fae.autoencoder.model import FAE
    from fae.autoencoder.pixel_decoder import PixelDecoder
    from fae.training.engine import train

    # stage Ib: the decoder alone is exported; metrics and a grid are written at the eval
    ib = train(build_stage(tiny_config(tmp_path / "ib", **{"cache_tokens": True})))
    ib_export = Path(ib["export"])
    assert {"Ib/true/psnr", "Ib/true/ssim"} <= set(ib["eval"])
    assert (tmp_path / "ib" / "recon_0000006.png").is_file()
    logged = [json.loads(line) for line in (tmp_path / "ib" / "metrics.jsonl").read_text().splitlines()]
    assert {"decoder/loss", "discriminator/loss"} <= set(logged[0])
    ib_decoder = PixelDecoder.from_pretrained(ib_export)

    fae_dir = tiny_fae_export(tmp_path / "fae")
    fae_files = {name: sha256(fae_dir / name) for name in ("config.json", "model.safetensors")}

    cfg = tiny_config(tmp_path / "ii", stage="finetune", fae=str(fae_dir), init_from=str(ib_export), backbone={},
                      **{"noise.sigma": 0.0, "train.steps": 4})
    stage = build_stage(cfg)
    start = stage.build_models("cpu")["pixel_decoder"]  # what the engine starts from
    for (name, a), b in zip(start.state_dict().items(), ib_decoder.state_dict().values()):
        assert torch.equal(a, b), name
    ii = train(stage)
    fae_identity = FAE.from_pretrained(fae_dir).identity()
    assert stage.fae.identity() == fae_identity  # the frozen FAE is untouched in memory ...
    assert {name: sha256(fae_dir / name) for name in fae_files} == fae_files  # ... and on disk
    assert {"Ib/fae/psnr", "II/fae/psnr", "II/true/ssim"} <= set(ii["eval"])
    assert (tmp_path / "ii" / "recon_0000004.png").is_file()

    # stage II exports a complete FAE: from_pretrained restores the image path z -> x_hat -> pixels
    exported = FAE.from_pretrained(ii["export"])
    assert exported.identity() == fae_identity
    tuned = exported.pixel_decoder
    assert any(not torch.equal(a, b) for a, b in zip(tuned.state_dict().values(),
                                                      ib_decoder.state_dict().values()))
    images = stage.held_out_set().images[:4]
    z = exported.encode(images)
    pixels = exported.decode(z)
    assert pixels.shape == (4, 1, 28, 28) and pixels.min() >= 0 and pixels.max() <= 1
    expected = (tuned(exported.decode_features(z)) + 1) / 2
    assert torch.allclose(pixels, expected.clamp(0, 1))
    config = json.loads((Path(ii["export"]) / "config.json").read_text())
    assert config["pixel_decoder"]["pixel_decoder"]["depth"] == 1
