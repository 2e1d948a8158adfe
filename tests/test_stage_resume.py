"""Kill-anywhere resume of the real stages (single process): SIGKILL a tiny run at a seeded random
step (the pixel decoder inside its GAN phase) or before a latent-cache shard, resume it by
re-running, and compare with an uninterrupted run: parameters, EMA, optimiser state, schedules,
step, data position and RNG states bitwise, logged metrics once per step, the same evaluation."""
from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from fae.cli import main as fae_main
from fae.training.checkpoint import load_file
from fae.training.metrics_log import read_metrics
from tiny import tiny_fae
from training_helpers import assert_bitwise_equal, single_thread

KILL_CLI = Path(__file__).with_name("kill_cli.py")
STEPS = 8
LOOP = [f"train.steps={STEPS}", "train.ckpt_every=2", "train.log_every=1", "train.progress=false",
        "train.tensorboard=false", "train.batch_size=8", "train.eval_every=0"]

STAGES = {  # stage -> (its overrides, the earliest step a kill may hit)
    "autoencoder": ([
        "--config", "demo/autoencoder.yaml", "backbone.name=tiny-vit", "backbone.resolution=null",
        "model.latent_channels=4", "model.encoder.heads=2", "model.encoder.head_dim=16",
        "model.decoder.depth=1", "model.decoder.width=32", "model.decoder.heads=2", "data.limit=32",
        "data.flip=true", "eval.limit=16", "eval.batch_size=16", "eval.probe=false", "stats_images=32",
        "cache_tokens=false", "train.ema_decay=0.9", "train.optim.warmup_steps=2"], 3),
    "pixel-decoder": ([
        "backbone.name=tiny-vit", "data.limit=32", "pixel_decoder.depth=1", "pixel_decoder.dim=32",
        "pixel_decoder.heads=2", "pixel_decoder.out_channels=1", "pixel_decoder.image_size=28",
        "noise.sigma=0.4", "noise.scale_images=32", "loss.perceptual=none", "loss.gan_weight=0.1",
        "loss.gan_start_step=3", "discriminator.channels=8", "discriminator.layers=2",
        "discriminator.groups=4", "eval.limit=16", "eval.batch_size=16", "eval.grid_images=4",
        "train.ema_decay=0.9", "train.optim.lr=1e-3"], 4),  # the GAN phase starts at step 3
    "generator": ([
        "data.cache={w}/cache", "data.fae={w}/fae", "model.depth=1", "model.dim=32", "model.heads=2",
        "model.num_classes=10", "train.ema_decay=0.9", "eval.grid_samples=4", "eval.loss_items=8",
        "sampling.method=euler", "sampling.steps=2"], 3),
}
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    """A tiny FAE export (with latent statistics) and its latent cache of 32 images."""
    from fae.training.latents import cache_latents

    w = tmp_path_factory.mktemp("kill")
    fae = tiny_fae()
    fae.set_latent_stats(torch.zeros(4), torch.ones(4))
    fae.save_pretrained(w / "fae")
    with single_thread():
        cache_latents(_cache_config(w, w / "cache"))
    return w


def _cache_config(w: Path, out: Path):
    from fae.data.datasets import DataConfig
    from fae.data.latent_cache import CacheConfig

    return CacheConfig(fae=str(w / "fae"), out=str(out), data=DataConfig(limit=32), flip=True,
                       shard_size=8, batch_size=8, progress=False)


def _killed(at: int, argv: list[str]) -> str:
    """Run ``fae argv`` in a subprocess that SIGKILLs itself at ``at``; returns its output."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(
        [str(REPO / "src"), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, str(KILL_CLI), str(at), *argv], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stdout + proc.stderr
    return proc.stdout


def _final_state(run_dir: Path) -> dict:
    state = load_file(run_dir / "checkpoints" / f"step-{STEPS:08d}.pt")
    state.pop("config")  # holds run_dir, which differs on purpose
    return state


@pytest.mark.slow
@pytest.mark.parametrize("stage", list(STAGES))
def test_a_stage_killed_anywhere_resumes_bitwise(world, tmp_path, capsys, stage):
    overrides, earliest = STAGES[stage]
    overrides = [o.replace("{w}", str(world)) for o in overrides + LOOP]
    at = random.Random(stage).randint(earliest, STEPS - 1)  # seeded: the same step every run
    killed, reference = tmp_path / "killed", tmp_path / "reference"
    _killed(at, ["train", stage, *overrides, f"train.run_dir={killed}"])
    saved = max(int(p.stem[5:]) for p in (killed / "checkpoints").glob("step-*.pt"))
    assert 2 <= saved <= at < STEPS
    with single_thread():
        cwd = os.getcwd()
        os.chdir(REPO)  # the autoencoder's --config is relative to the checkout
        try:
            assert fae_main(["train", stage, *overrides, f"train.run_dir={killed}"]) == 0
            assert f"(step {saved})" in capsys.readouterr().out  # resumed, not started over
            assert fae_main(["train", stage, *overrides, f"train.run_dir={reference}"]) == 0
        finally:
            os.chdir(cwd)
    assert_bitwise_equal(_final_state(killed), _final_state(reference))
    assert [r["step"] for r in read_metrics(killed, "train")] == list(range(1, STEPS + 1))
    assert read_metrics(killed, "eval")[-1] == read_metrics(reference, "eval")[-1]


def _shards(folder: Path) -> dict[str, dict[str, torch.Tensor]]:
    from safetensors.torch import load_file as load_tensors

    return {p.name: load_tensors(str(p)) for p in sorted(folder.glob("*.safetensors"))}


@pytest.mark.slow
def test_a_latent_cache_killed_between_shards_resumes_bitwise(world, tmp_path):
    from fae.data.latent_cache import LatentCache
    from fae.training.latents import cache_latents

    killed = tmp_path / "killed"
    at = random.Random("cache-latents").randint(1, 3)  # of the 4 shards
    _killed(at, ["cache-latents", f"fae={world / 'fae'}", f"out={killed}", "data.limit=32", "flip=true",
                 "shard_size=8", "batch_size=8", "progress=false"])
    assert len(_shards(killed)) == at  # the shards written before the kill
    with single_thread():
        cache_latents(_cache_config(world, killed))
    written, reference = _shards(killed), _shards(world / "cache")
    assert list(written) == list(reference) and len(written) == 4
    assert_bitwise_equal(written, reference)
    assert len(LatentCache(killed, fae=world / "fae")) == 32
