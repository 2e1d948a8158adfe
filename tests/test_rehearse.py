"""The full-shape rehearsal of the paper recipes (bench/rehearse_recipes.py) at depth 1: the recipe
files of imagenet256/ (the shipped configs) at their real widths and input / latent shapes (DINOv2-g/14 random
weights at 224 px -> 16x16x1536, 16x16x32 latents, 256 px images), through the `fae train` stage
loader and the engine, on a generated ImageNet-layout JPEG folder. fp32 here: bf16 matmuls on CPUs
without native bf16 run 10-100x slower (the bench runs bf16: `bench/rehearse.py --depth 1`). The
STARFlow, MMDiT and SigLIP2 recipes take the same engine and export paths; the bench rehearses them.
"""
from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import rehearse_recipes as recipes  # noqa: E402

pytestmark = pytest.mark.slow
DEPTH = 1


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    """The JPEG folder; $FAE_WEIGHTS_DINOV2_G14=random:1 for verbs that look the backbone up
    themselves (cache-latents through FAE.from_pretrained), as bench/rehearse.py sets it."""
    root = tmp_path_factory.mktemp("rehearse")
    recipes.write_images(root / "imagenet", classes=2, train=2, val=1)
    with pytest.MonkeyPatch.context() as env:
        env.setenv("FAE_WEIGHTS_DINOV2_G14", recipes.random_weights(DEPTH))
        yield recipes.Work(root, precision="fp32")


@pytest.fixture(scope="module")
def fae_run(work) -> dict:
    """fae_dinov2g (backbone in the step): straight to 2, to 1 then resumed to 2, export checked."""
    return recipes.rehearse_training("fae_dinov2g", work, DEPTH)


@pytest.fixture(scope="module")
def pixel_run(work) -> dict:
    """pixel_decoder_vitl, one step with LPIPS (random VGG) and the GAN from step 0."""
    result = recipes.train_run("pixel_decoder_vitl", work, DEPTH, work.run("pixel_decoder_vitl") / "straight", 1,
                               probe=recipes.PROBES["pixel-decoder"])
    stage = recipes.load("pixel_decoder_vitl", work, DEPTH, work.run("pixel_decoder_vitl") / "straight", 1)
    result["reloaded"] = recipes.RELOADS["pixel-decoder"](stage, result["export"])
    return result


@pytest.fixture(scope="module")
def stage_ii_export(work, fae_run, pixel_run) -> Path:
    """The Ia FAE with the Ib decoder attached, where stage II writes its export (the stage-II
    export is exactly this object saved; training it again would only cost time here)."""
    from fae.autoencoder import FAE
    from fae.autoencoder.pixel_decoder import PixelDecoder

    fae = FAE.from_pretrained(fae_run["export"])
    fae.set_pixel_decoder(PixelDecoder.from_pretrained(pixel_run["export"]))
    return fae.save_pretrained(work.export("pixel_decoder_vitl_ii"))


def test_fae_dinov2g_at_224px_resumes_bitwise(fae_run):
    assert fae_run["resume_bitwise"], fae_run["resume_differences"]
    assert fae_run["resumed_from"] == 1
    assert fae_run["losses"] and fae_run["losses_finite"], fae_run["losses"]
    assert fae_run["export_same_output"]
    assert fae_run["trained_params"]["fae"] > 38_000_000  # the one-layer encoder alone is 38.17M


def test_pixel_decoder_lpips_and_gan(pixel_run, work):
    record = recipes.last_record(work.run("pixel_decoder_vitl") / "straight")
    for key in ("decoder/loss", "decoder/perceptual", "decoder/g_loss", "discriminator/loss"):
        assert math.isfinite(record[key]), record
    assert pixel_run["reference"].shape == (2, 3, 256, 256)
    assert torch.equal(pixel_run["reference"], pixel_run["reloaded"])


def test_sit_xl1_samples_256px_images_through_the_fae(work, stage_ii_export):
    recipes.cache_labelled(work)
    run_dir = work.run("sit_xl1") / "straight"
    result = recipes.train_run("sit_xl1", work, DEPTH, run_dir, 1)
    assert all(math.isfinite(v) for v in recipes.last_losses(run_dir).values())
    samples = recipes.sample_images(work, Path(result["export"]), work.run("sit_xl1") / "samples.npz")
    assert samples["samples_ok"], samples  # uint8 [2, 256, 256, 3], not constant
    grid = sorted((run_dir / "samples").glob("*.png"))
    assert grid, "the evaluation's sample grid was not written"


def test_checkpoint_digests_tell_a_one_bit_difference(tmp_path):
    """The resume check compares checkpoints by digest: one flipped bit in one optimiser moment
    (a bf16 one), a missing key, or a different step counter must each show."""
    state = {"models": {"m": {"w": torch.arange(6.0).reshape(2, 3)}}, "ema": {"m": {"w": torch.ones(3)}},
             "optimizers": {"m": {"state": {0: {"step": torch.tensor(2.0),
                                                "exp_avg": torch.ones(4, dtype=torch.bfloat16)}},
                                  "param_groups": [{"lr": 1e-4}]}}}
    torch.save(state, tmp_path / "a.pt")
    same = recipes.checkpoint_digest(tmp_path / "a.pt")
    assert recipes.digest_differences(same, recipes.checkpoint_digest(tmp_path / "a.pt")) == []
    moment = state["optimizers"]["m"]["state"][0]["exp_avg"]
    moment.view(torch.int16)[1] ^= 1  # the lowest mantissa bit of one element
    state["optimizers"]["m"]["param_groups"][0]["lr"] = 2e-4
    del state["ema"]["m"]["w"]
    torch.save(state, tmp_path / "b.pt")
    differences = recipes.digest_differences(same, recipes.checkpoint_digest(tmp_path / "b.pt"))
    assert sorted(differences) == ["ema.m.w", "optimizers.m.param_groups[0].lr", "optimizers.m.state.0.exp_avg"]
