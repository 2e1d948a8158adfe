"""The text-to-image MMDiT: joint attention ignores padded text tokens, null-caption CFG at scale 1
is the conditional velocity, caption dropout, a tiny training run through the engine on a captioned
latent cache lowers the loss, and its export reloads and samples from prompts (Python and CLI)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from fae.cli import main as fae_main
from fae.config import load_config
from fae.data.datasets import DataConfig, build_dataset
from fae.data.latent_cache import CacheConfig
from fae.errors import FAEError
from fae.evaluation.stats import read_prompts, read_sample_batch
from fae.generation import MMDiTConfig, TextCondition, TextToImageGenerator, build_mmdit, load_generator
from fae.generation.samplers import GuidedVelocity, SamplerConfig
from fae.nn import Attention, joint_attention
from fae.training.engine import train
from fae.training.latents import cache_latents
from fae.training.stages.generator import GeneratorRunConfig, build_stage

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py

TINY = dict(depth=2, dim=32, heads=2, latent_channels=4, latent_size=4, text_dim=12, pooled_dim=6)


def tiny_model(seed: int = 0, **kw) -> torch.nn.Module:
    """A tiny MMDiT with every adaLN-Zero layer re-drawn, so text actually reaches the output."""
    torch.manual_seed(seed)
    model = build_mmdit(MMDiTConfig(**{**TINY, **kw}))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "adaLN" in name or name.startswith("final"):
                p.normal_(0, 0.2)
    return model.eval()


def text(batch: int, length: int, real: list[int], seed: int = 1) -> TextCondition:
    g = torch.Generator().manual_seed(seed)
    mask = torch.arange(length)[None] < torch.tensor(real)[:, None]  # [B, L]
    return TextCondition(torch.randn(batch, length, 12, generator=g), mask, torch.randn(batch, 6, generator=g))


def test_padded_text_tokens_change_nothing():
    model = tiny_model()
    z, t = torch.randn(2, 4, 4, 4), torch.tensor([0.3, 0.8])
    cond = text(2, 5, [3, 5])
    v = model(z, t, cond)
    # other values in the padded rows, and more padding, give the same velocity
    noisy = cond.tokens.clone()
    noisy[0, 3:] = 100 * torch.randn(2, 12)
    torch.testing.assert_close(model(z, t, TextCondition(noisy, cond.mask, cond.pooled)), v)
    longer = TextCondition(torch.cat([cond.tokens, torch.randn(2, 4, 12)], 1),
                           torch.cat([cond.mask, torch.zeros(2, 4, dtype=torch.bool)], 1), cond.pooled)
    torch.testing.assert_close(model(z, t, longer), v, atol=1e-5, rtol=1e-5)
    # a real token does matter (the test can fail)
    changed = cond.tokens.clone()
    changed[0, 1] += 1.0
    assert not torch.allclose(model(z, t, TextCondition(changed, cond.mask, cond.pooled))[0], v[0])


def test_joint_attention_is_one_softmax_over_both_streams():
    torch.manual_seed(0)
    a, b = Attention(16, 2), Attention(16, 2)
    x, y = torch.randn(1, 5, 16), torch.randn(1, 3, 16)
    mask = torch.tensor([[True, True, False]])
    out_x, out_y = joint_attention([(a, x, None, None), (b, y, None, mask)])
    # by hand: concatenated q/k/v, the masked key removed
    qa, ka, va = a.project(x)
    qb, kb, vb = b.project(y[:, :2])
    k, v = torch.cat([ka, kb], 2), torch.cat([va, vb], 2)
    att = torch.softmax(torch.cat([qa, b.project(y)[0]], 2) @ k.transpose(-1, -2) / 8 ** 0.5, -1) @ v
    torch.testing.assert_close(out_x, a.output(att[:, :, :5]), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out_y, b.output(att[:, :, 5:]), atol=1e-5, rtol=1e-5)


def test_null_caption_cfg_at_scale_one_is_the_conditional_velocity():
    model = tiny_model()
    x, t = torch.randn(3, 4, 4, 4), torch.full((3,), 0.5)
    cond = text(3, 4, [2, 4, 1])
    null = model.conditioner.null_like(cond)
    v_c = model(x, t, cond)
    torch.testing.assert_close(GuidedVelocity(model, cond, null, SamplerConfig(cfg_scale=1.0))(x, t), v_c)
    v_u = model(x, t, null)
    assert not torch.allclose(v_u, v_c)
    guided = GuidedVelocity(model, cond, null, SamplerConfig(cfg_scale=3.0))(x, t)
    torch.testing.assert_close(guided, v_u + 3.0 * (v_c - v_u), atol=1e-5, rtol=1e-5)  # every channel
    outside = GuidedVelocity(model, cond, null, SamplerConfig(cfg_scale=3.0, cfg_interval=(0.0, 0.4)))(x, t)
    torch.testing.assert_close(outside, v_c)  # the interval rule of class CFG


def test_caption_dropout_uses_the_learned_null_caption():
    model = tiny_model(caption_dropout=0.5)
    cond = text(400, 3, [3] * 400)
    dropped = model.conditioner.drop(cond)
    is_null = (dropped.pooled == model.conditioner.null_pooled).all(-1)
    assert 0.4 < is_null.float().mean() < 0.6
    assert (dropped.mask[is_null].sum(-1) == 1).all() and torch.equal(dropped.tokens[~is_null], cond.tokens[~is_null])


def test_paper_preset_size():
    cfg = MMDiTConfig(latent_channels=32, latent_size=16, text_dim=2048, pooled_dim=2048)
    n = build_mmdit(cfg, "meta").num_params()
    assert abs(n / 603.46e6 - 1) < 0.02, n


# ------------------------------------------------------------------ pipeline through the engine

CAPTIONS = ["a photo of a t-shirt", "a shirt, product shot", "a photo of a trouser", "trousers on white"]


@pytest.fixture(scope="module")
def captioned(tmp_path_factory):
    """A tiny FAE export and a captioned latent cache with MiniLM embeddings."""
    from test_generation_pipeline import export_fae

    root = tmp_path_factory.mktemp("t2i")
    export_fae(root / "fae", seed=0)
    images = build_dataset(DataConfig(limit=48))
    (root / "images").mkdir()
    with open(root / "captions.jsonl", "w") as f:
        for i in range(48):
            image, label = images[i]
            Image.fromarray(image[0].numpy()).save(root / "images" / f"{i}.png")
            f.write(json.dumps({"file": f"{i}.png", "caption": CAPTIONS[(label % 2) * 2 + i % 2]}) + "\n")
    data = DataConfig(name="captions", root=str(root / "images"), captions=str(root / "captions.jsonl"))
    cache_latents(CacheConfig(fae=str(root / "fae"), out=str(root / "cache"), data=data, shard_size=20,
                              batch_size=16, progress=False, text_encoder="all-minilm-l6-v2", text_max_length=16))
    return root


def t2i_overrides(root: Path, run: str, steps: int, *extra: str) -> list[str]:
    return ["kind=mmdit", f"data.cache={root / 'cache'}", f"train.run_dir={root / run}", "mmdit.depth=2",
            "mmdit.dim=32", "mmdit.heads=2", "text.encoder=all-minilm-l6-v2", "text.max_length=16",
            f"train.steps={steps}", "train.batch_size=16", "train.optim.lr=2e-3", "train.ema_decay=0.9",
            "train.log_every=10", "train.ckpt_every=0", "train.eval_every=0", "train.progress=false",
            "eval.grid_samples=0", "eval.loss_items=48", "sampling.steps=4", "data.flip=false", *extra]


def test_tiny_mmdit_training_lowers_the_loss_and_its_export_samples_from_prompts(captioned, capsys):
    before = train(build_stage(load_config(GeneratorRunConfig, None, t2i_overrides(captioned, "r0", 0))))
    after = train(build_stage(load_config(GeneratorRunConfig, None, t2i_overrides(captioned, "run", 80))))
    assert after["eval"]["fixed_noise_loss"] < 0.8 * before["eval"]["fixed_noise_loss"]
    gen = load_generator(after["export"])
    assert isinstance(gen, TextToImageGenerator) and gen.text["encoder"] == "all-minilm-l6-v2"
    again = TextToImageGenerator.from_pretrained(after["export"])
    z = gen.sample(prompts=CAPTIONS[:3], seed=1)
    torch.testing.assert_close(again.sample(prompts=CAPTIONS[:3], seed=1), z)
    assert z.shape == (3, 4, 4, 4)
    # batch-size independent, and prompt i is a function of (seed, index, prompt) only
    torch.testing.assert_close(gen.sample(prompts=CAPTIONS[:3], seed=1, batch_size=2), z, atol=1e-5, rtol=1e-5)
    prompts = captioned / "prompts.txt"
    prompts.write_text("a photo of a t-shirt\n\ntrousers on white\n")
    out = captioned / "t2i.npz"
    assert fae_main(["sample", "--generator", after["export"], "--fae", str(captioned / "fae"), "--prompts",
                     str(prompts), "--out", str(out), "sampling.steps=4"]) == 0
    images, labels = read_sample_batch(out)
    assert images.shape == (2, 28, 28, 3) and labels.tolist() == [-1, -1]
    assert read_prompts(out) == ["a photo of a t-shirt", "trousers on white"]
    # a text-to-image generator without prompts is refused with a message naming the flag
    assert fae_main(["sample", "--generator", after["export"], "--fae", str(captioned / "fae"),
                     "--num", "2", "--out", str(out)]) == 2
    assert "--prompts" in capsys.readouterr().err


def test_online_text_embeddings_train_too_and_a_mismatched_cache_is_refused(captioned):
    result = train(build_stage(load_config(GeneratorRunConfig, None, t2i_overrides(
        captioned, "online", 2, "text.embeddings=online"))))
    assert np.isfinite(result["eval"]["fixed_noise_loss"])
    stage = build_stage(load_config(GeneratorRunConfig, None, t2i_overrides(
        captioned, "bad", 1, "text.max_length=32")))
    with pytest.raises(FAEError, match="max_length"):
        stage.setup(torch.device("cpu"))
