"""LeCam regularisation of the pixel decoder's discriminator (Tseng et al. 2021): the value against a
hand computation, the moving averages, loss.lecam_weight=0 leaving the discriminator loss and
state untouched, and a killed run with LeCam on resuming bitwise (its averages included)."""
from __future__ import annotations

import os
import random

import pytest
import torch

from fae.autoencoder.discriminator import DiscriminatorConfig, PatchDiscriminator
from fae.autoencoder.losses import LeCamEMA, PixelLossConfig, hinge_d_loss, lecam_regularization
from fae.cli import main as fae_main
from fae.errors import ConfigError
from fae.training.stages.pixel_decoder import build_stage
from test_pixel_decoder_stage import tiny_config
from test_stage_resume import LOOP, REPO, STAGES, STEPS, _final_state, _killed
from training_helpers import assert_bitwise_equal, single_thread

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def test_regularisation_equals_a_hand_computation():
    logits_real = torch.tensor([[0.5, -1.0], [2.0, 0.3]])
    logits_fake = torch.tensor([[-0.5, 0.6], [1.0, -2.0]])
    ema_real, ema_fake = torch.tensor(0.4), torch.tensor(-0.2)
    # real: relu(r + 0.2) = 0.7, 0, 2.2, 0.5 -> squares 0.49, 0, 4.84, 0.25 -> mean 1.395
    # fake: relu(0.4 - f) = 0.9, 0, 0, 2.4 -> squares 0.81, 0, 0, 5.76 -> mean 1.6425
    reg = lecam_regularization(logits_real, logits_fake, ema_real, ema_fake)
    assert reg.item() == pytest.approx(1.395 + 1.6425, abs=1e-6)
    # logits already on the right side of the other average: no penalty
    assert lecam_regularization(torch.full((4,), -1.0), torch.full((4,), 1.0), ema_real, ema_fake).item() == 0.0


def test_moving_averages_start_at_zero_and_follow_the_batch_means():
    ema = LeCamEMA(decay=0.9)
    assert (ema.real.item(), ema.fake.item()) == (0.0, 0.0)
    ema.update(torch.tensor(1.0), torch.tensor(-2.0))
    assert (ema.real.item(), ema.fake.item()) == pytest.approx((0.1, -0.2))
    ema.update(torch.tensor(3.0), torch.tensor(0.0))
    assert (ema.real.item(), ema.fake.item()) == pytest.approx((0.9 * 0.1 + 0.1 * 3.0, 0.9 * -0.2))
    assert set(ema.state_dict()) == {"real", "fake"}  # buffers: checkpoints carry them


def test_config_rejects_bad_lecam_keys():
    with pytest.raises(ConfigError, match="loss.lecam_weight"):
        PixelLossConfig(lecam_weight=-1.0).validate()
    with pytest.raises(ConfigError, match="loss.lecam_ema_decay"):
        PixelLossConfig(lecam_ema_decay=1.0).validate()


def _discriminator_step(tmp_path, **loss):
    """(stage, models, discriminator loss, logs) of one discriminator-phase call on 8 images."""
    stage = build_stage(tiny_config(tmp_path, **{f"loss.{k}": v for k, v in loss.items()}))
    torch.manual_seed(0)
    models = stage.build_models("cpu")
    stage.setup(torch.device("cpu"))
    batch = [stage.train_dataset().images[:8], torch.zeros(8, dtype=torch.long)]
    torch.manual_seed(1)
    loss_value, logs = stage.loss("discriminator", batch, models, step=0)
    return stage, models, loss_value, logs


def test_zero_weight_adds_no_term_and_no_state(tmp_path):
    plain = PatchDiscriminator(DiscriminatorConfig(channels=8, layers=2, groups=4), 1)
    _, models, off, logs = _discriminator_step(tmp_path / "off")
    assert models["discriminator"].lecam is None
    assert set(models["discriminator"].state_dict()) == set(plain.state_dict())  # old checkpoints load
    assert "lecam" not in logs and torch.equal(off, logs["d_loss"])
    _, models_on, on, logs_on = _discriminator_step(tmp_path / "on", lecam_weight=0.5, lecam_ema_decay=0.9)
    assert torch.equal(logs_on["d_loss"], off)  # the same hinge loss: LeCam only adds its term
    ema = models_on["discriminator"].lecam
    # one update from zero: 0.1 x the batch mean logits, then R_LC against them
    assert ema.real.item() == pytest.approx(0.1 * logs_on["logits_real"].item(), rel=1e-5)
    assert ema.fake.item() == pytest.approx(0.1 * logs_on["logits_fake"].item(), rel=1e-5)
    assert logs_on["lecam"].item() > 0
    assert on.item() == pytest.approx(off.item() + 0.5 * logs_on["lecam"].item(), rel=1e-6)


@pytest.mark.slow
def test_a_killed_run_with_lecam_resumes_bitwise(tmp_path, capsys):
    overrides = STAGES["pixel-decoder"][0] + LOOP + ["loss.lecam_weight=0.1", "loss.lecam_ema_decay=0.9"]
    at = random.Random("lecam").randint(STAGES["pixel-decoder"][1], STEPS - 1)  # inside the GAN phase
    killed, reference = tmp_path / "killed", tmp_path / "reference"
    _killed(at, ["train", "pixel-decoder", *overrides, f"train.run_dir={killed}"])
    with single_thread():
        cwd = os.getcwd()
        os.chdir(REPO)
        try:
            assert fae_main(["train", "pixel-decoder", *overrides, f"train.run_dir={killed}"]) == 0
            assert "resumed from" in capsys.readouterr().out
            assert fae_main(["train", "pixel-decoder", *overrides, f"train.run_dir={reference}"]) == 0
        finally:
            os.chdir(cwd)
    final, expected = _final_state(killed), _final_state(reference)
    disc = expected["models"]["discriminator"]
    assert disc["lecam.real"].item() != 0.0 and disc["lecam.fake"].item() != 0.0  # the averages moved
    assert_bitwise_equal(final, expected)


@pytest.mark.parametrize("name", ["pixel_decoder_vitl.yaml", "pixel_decoder_vitl_ii.yaml"])
def test_imagenet_configs_follow_titoks_released_stage_2_recipe(name):
    from fae.config import SHIPPED_CONFIGS, load_config
    from fae.training.stages.pixel_decoder import CONFIG_CLASS

    loss = load_config(CONFIG_CLASS, SHIPPED_CONFIGS / "imagenet256" / name).loss
    assert (loss.l1_weight, loss.l2_weight, loss.perceptual_weight) == (0.0, 1.0, 0.1)
    assert (loss.gan_weight, loss.adaptive_gan_weight, loss.gan_start_step) == (0.01, False, 20000)
    assert (loss.lecam_weight, loss.lecam_ema_decay) == (0.001, 0.999)
