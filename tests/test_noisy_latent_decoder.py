"""Stage II on noisy latents (``latent_noise``): STARFlow's ``finetuned_vae`` for ``fae sample``.

Off (null / 0) it is stage II bit for bit; on, the decoder's input is D_feat(z + std * latent_std *
eps) with the noise measured per channel; only the pixel decoder trains, so the export keeps the
FAE's identity and a flow sampler accepts it as ``finetuned_decoder``.
Everything runs on tiny-vit (4x4 tokens of width 64, 4 latent channels) and 28 px Fashion-MNIST.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch

from fae.autoencoder.model import FAE
from fae.autoencoder.noise import add_latent_noise
from fae.config import SHIPPED_CONFIGS, load_config, read_yaml, to_dict
from fae.errors import ConfigError
from fae.generation.decode import check_pair, decoder_folder
from fae.generation.flow_config import FlowSamplerConfig
from fae.training.engine import train
from fae.training.stages.pixel_decoder import CONFIG_CLASS, build_stage
from test_pixel_decoder_stage import tiny_config, tiny_ib_export
from tiny import tiny_fae, tiny_generator

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py

LATENT_STD = torch.tensor([0.5, 1.0, 2.0, 4.0])  # per channel: different, so a scalar scale would show


def fae_export(folder: Path) -> Path:
    """The tiny FAE with per-channel latent statistics that differ, as a stage-Ia export."""
    fae = tiny_fae(seed=1, feature_norm="none")
    fae.set_latent_stats(torch.tensor([0.1, -0.2, 0.3, 0.0]), LATENT_STD)
    return fae.save_pretrained(folder)


def stage_ii(tmp_path: Path, std: float | str | None, **overrides):
    """A stage-II run config on ``fae_export`` (no token noise, no GAN); ``std`` "absent" leaves
    the ``latent_noise`` key out."""
    fae_dir = tmp_path / "fae"
    if not fae_dir.exists():
        fae_export(fae_dir)
    ib_dir = tmp_path / "ib"
    if not ib_dir.exists():
        tiny_ib_export(ib_dir)
    settings = {"noise.sigma": 0.0, "loss.gan_weight": 0.0, "train.steps": 3, "eval.limit": 8,
                "eval.batch_size": 8, "eval.grid_images": 0, **overrides}
    if std != "absent":
        settings["latent_noise.std"] = std
    return tiny_config(tmp_path / f"ii_{std}", stage="finetune", fae=str(fae_dir), init_from=str(ib_dir),
                       backbone={}, **settings)


def run(cfg) -> tuple[list[float], bytes]:
    """Train ``cfg``; (the logged decoder losses, the export's weight bytes)."""
    result = train(build_stage(cfg))
    logged = [json.loads(line) for line in (Path(cfg.train.run_dir) / "metrics.jsonl").read_text().splitlines()]
    losses = [entry["decoder/loss"] for entry in logged if "decoder/loss" in entry]
    return losses, (Path(result["export"]) / "model.safetensors").read_bytes()


@pytest.mark.slow
def test_std_null_or_zero_is_stage_ii_bit_for_bit(tmp_path):
    """latent_noise off (absent, null or 0): the same losses and export bytes, and the saved config
    of an absent / null key is the one written before the key existed."""
    reference = run(stage_ii(tmp_path, "absent", **{"train.log_every": 1}))
    assert len(reference[0]) == 3 and len(set(reference[0])) == 3  # three different step losses
    for std in (None, 0.0):
        assert run(stage_ii(tmp_path, std, **{"train.log_every": 1})) == reference, std
    assert "latent_noise" not in to_dict(stage_ii(tmp_path, None))
    noisy = run(stage_ii(tmp_path, 0.3, **{"train.log_every": 1}))
    assert noisy[0] != reference[0]  # and the option does something


@pytest.mark.parametrize("cache", [False, True])
def test_decoder_input_is_x_hat_of_latents_with_noise_of_std_times_latent_std(tmp_path, cache):
    """The stage decodes z + noise with (noisy - clean) / latent_std of std 0.3 in every channel."""
    cfg = stage_ii(tmp_path, 0.3, cache_tokens=cache, **{"data.flip": False, "eval.batch_size": 64})
    stage = build_stage(cfg)
    assert "std 0.3 x the FAE's per-channel latent std" in stage.describe()["latent noise"]
    stage.build_models("cpu")
    stage.setup(torch.device("cpu"))
    dataset = stage.train_dataset()
    items = [dataset[i] for i in range(64)]
    batch = [torch.stack([item[0] for item in items]), torch.tensor([item[1] for item in items])]
    if cache:  # cached: the latents z, not x_hat
        batch.append(torch.stack([item[2] for item in items]))
        assert batch[2].shape == (64, 4, 4, 4)
    clean = stage.fae.encode(stage.backbone(batch[0]))  # [64, 4, 4, 4]
    if cache:  # E(x) of the fp16-cached tokens
        assert torch.allclose(batch[2], clean, atol=2e-2)
        clean = batch[2]
    decoded = []
    decode_features = stage.fae.decode_features
    stage.fae.decode_features = lambda z: decoded.append(z) or decode_features(z)  # records the latents
    torch.manual_seed(0)
    tokens = stage.input_tokens(batch)
    (noisy,) = decoded
    assert torch.equal(tokens, decode_features(noisy))
    ratio = ((noisy - clean) / LATENT_STD.view(1, -1, 1, 1)).transpose(0, 1).reshape(4, -1)  # [c, 64*16]
    assert ratio.std(dim=1).tolist() == pytest.approx([0.3] * 4, rel=0.08)
    assert ratio.mean(dim=1).abs().max() < 0.03
    raw = (noisy - clean).transpose(0, 1).reshape(4, -1).std(dim=1)  # the raw noise follows latent_std
    assert raw.tolist() == pytest.approx((0.3 * LATENT_STD).tolist(), rel=0.08)
    torch.manual_seed(0)  # the noise is the global RNG's: the same seed, the same helper draw
    assert torch.allclose(noisy, add_latent_noise(clean, 0.3, LATENT_STD), atol=1e-5)


def test_add_latent_noise_scales_each_channel_and_zero_is_the_input_itself():
    z = torch.zeros(2000, 4, 2, 2)
    assert add_latent_noise(z, 0.0, LATENT_STD) is z
    torch.manual_seed(0)
    noise = add_latent_noise(z, 0.5, LATENT_STD).transpose(0, 1).reshape(4, -1)
    assert noise.std(dim=1).tolist() == pytest.approx((0.5 * LATENT_STD).tolist(), rel=0.05)


@pytest.mark.slow
def test_export_keeps_the_fae_identity_and_serves_as_a_flow_finetuned_decoder(tmp_path):
    cfg = stage_ii(tmp_path, 0.3)
    stage = build_stage(cfg)
    fae_bytes = hashlib.sha256((tmp_path / "fae" / "model.safetensors").read_bytes()).hexdigest()
    export = train(stage)["export"]
    source, exported = FAE.from_pretrained(tmp_path / "fae"), FAE.from_pretrained(export)
    assert exported.identity() == source.identity()
    assert torch.equal(exported.latent_std, LATENT_STD)  # the statistics the noise was scaled by
    assert hashlib.sha256((tmp_path / "fae" / "model.safetensors").read_bytes()).hexdigest() == fae_bytes
    # a flow trained on latents of the source FAE decodes with this export (fae sample's path)
    flow = tiny_generator("flow")
    flow.fae_identity = {"identity": source.identity()}
    sampling = FlowSamplerConfig(finetuned_decoder=str(export))
    assert decoder_folder(sampling, str(tmp_path / "fae")) == str(export) and not sampling.score_step
    check_pair(flow, exported.identity(), exported.latent_shape, "flow", str(export))  # no error
    z = torch.randn(2, *exported.latent_shape)
    images = exported.decode(z)
    assert images.shape == (2, 1, 28, 28) and 0 <= images.min() and images.max() <= 1


def test_latent_noise_is_refused_where_it_means_nothing(tmp_path):
    with pytest.raises(ConfigError, match=r"'latent_noise.std' must be >= 0"):
        stage_ii(tmp_path, -0.1)
    with pytest.raises(ConfigError, match=r"'latent_noise.std' \(0.3\) needs stage=finetune"):
        tiny_config(tmp_path / "ib", **{"latent_noise.std": 0.3})


def test_shipped_noisy_config_is_stage_ii_with_the_flows_noise_std():
    root = SHIPPED_CONFIGS / "imagenet256"
    noisy = to_dict(load_config(CONFIG_CLASS, root / "pixel_decoder_vitl_ii_noisy.yaml"))
    plain = to_dict(load_config(CONFIG_CLASS, root / "pixel_decoder_vitl_ii.yaml"))
    flow = read_yaml(root / "starflow_fae.yaml")  # one key: the generator schema is not needed
    assert noisy.pop("latent_noise") == {"std": flow["flow"]["noise_std"]} == {"std": 0.3}
    assert noisy["train"].pop("run_dir") != plain["train"].pop("run_dir")
    assert noisy == plain  # everything else is the stage-II recipe
    assert "pixel_decoder_vitl_ii_noisy.yaml" in (root / "starflow_fae.yaml").read_text()
