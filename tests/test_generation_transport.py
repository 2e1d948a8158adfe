"""Flow transport: the time convention, the paper's shift converted to t = 1 noise, the loss."""

import pytest
import torch

from fae.config import SHIPPED_CONFIGS, load_config
from fae.errors import ConfigError
from fae.generation.transport import (Transport, TransportConfig, cosine_velocity_loss, interpolate, sample_time,
                                      shift_time, target_velocity, time_grid, velocity_to_eps, velocity_to_x0)
from fae.training.stages.generator import GeneratorRunConfig


def test_shift_matches_the_papers_rational_form_written_with_t0_as_noise():
    t = torch.linspace(0, 1, 101, dtype=torch.float64)
    s = 0.4
    tau = 1 - t  # the paper's time: tau = 0 is noise
    tau_shifted = s * tau / (1 + (s - 1) * tau)
    assert torch.allclose(shift_time(t, s), 1 - tau_shifted, atol=1e-12)
    # The worked example in transport.py's docstring.
    assert float(shift_time(torch.tensor(0.5), 0.4)) == pytest.approx(0.5 / 0.7)
    # s < 1 moves times towards noise, keeps the endpoints, and s = 1 is the identity.
    assert (shift_time(t, s)[1:-1] > t[1:-1]).all()
    assert shift_time(t, s)[0] == 0 and shift_time(t, s)[-1] == 1
    assert torch.equal(shift_time(t, 1.0), t)


def test_path_endpoints_and_velocity_conversions():
    torch.manual_seed(0)
    x0, eps = torch.randn(5, 2, 3, 3), torch.randn(5, 2, 3, 3)
    assert torch.equal(interpolate(x0, eps, torch.zeros(5)), x0)
    assert torch.equal(interpolate(x0, eps, torch.ones(5)), eps)
    t = torch.rand(5)
    x_t, v = interpolate(x0, eps, t), target_velocity(x0, eps)
    assert torch.allclose(velocity_to_x0(x_t, t, v), x0, atol=1e-6)
    assert torch.allclose(velocity_to_eps(x_t, t, v), eps, atol=1e-6)


def test_time_grid_runs_from_noise_to_data_and_uses_the_shift():
    grid = time_grid(10, 0.4)
    assert grid[0] == 1 and grid[-1] == 0 and (grid[1:] < grid[:-1]).all()
    assert torch.allclose(grid, shift_time(torch.linspace(1, 0, 11), 0.4))


def test_time_sampling_distributions():
    g = torch.Generator().manual_seed(0)
    uniform = sample_time(20000, TransportConfig(), generator=g)
    assert 0 <= uniform.min() and uniform.max() <= 1 and abs(uniform.mean() - 0.5) < 0.01
    logit = sample_time(20000, TransportConfig(time_sampling="logit_normal", logit_mean=1.0), generator=g)
    assert abs(torch.logit(logit).mean() - 1.0) < 0.03 and abs(torch.logit(logit).std() - 1.0) < 0.03
    # Training times are shifted: with s = 0.4 their median is shift(0.5) = 0.714.
    shifted = Transport(TransportConfig(shift=0.4)).training_times(20000, "cpu", generator=g)
    assert shifted.median() == pytest.approx(0.5 / 0.7, abs=0.01)


def test_loss_is_the_velocity_mse():
    # A model predicting zero has loss E|eps - x0|^2 = 1 + E[x0^2] per element.
    x0 = torch.full((512, 2, 4, 4), 2.0)
    transport = Transport(TransportConfig())
    loss = transport.loss(lambda x, t, c: torch.zeros_like(x), x0, generator=torch.Generator().manual_seed(0))
    assert float(loss) == pytest.approx(5.0, rel=0.02)
    # The exact velocity (known here since x0 is constant) gives zero loss.
    exact = lambda x, t, c: (x - x0) / t.view(-1, 1, 1, 1)  # eps - x0 with eps = (x - (1-t) x0) / t
    assert float(transport.loss(exact, x0)) < 1e-6


def test_lightningdit_logit_normal_has_the_stated_logit_mean_and_std():
    g = torch.Generator().manual_seed(1)
    t = sample_time(40000, TransportConfig(time_sampling="logit_normal"), generator=g)  # N(0, 1) logits
    assert abs(torch.logit(t.double()).mean()) < 0.02 and abs(torch.logit(t.double()).std() - 1.0) < 0.02
    wide = sample_time(40000, TransportConfig(time_sampling="logit_normal", logit_mean=-0.5, logit_std=2.0),
                       generator=g)
    assert torch.logit(wide.double()).mean() == pytest.approx(-0.5, abs=0.04)
    assert torch.logit(wide.double()).std() == pytest.approx(2.0, abs=0.04)


def test_cosine_velocity_loss_values():
    torch.manual_seed(0)
    v = torch.randn(4, 3, 2, 2)
    assert float(cosine_velocity_loss(v, v)) == pytest.approx(0.0, abs=1e-6)  # identical velocities
    assert float(cosine_velocity_loss(v, 3.0 * v)) == pytest.approx(0.0, abs=1e-6)  # the direction only
    assert float(cosine_velocity_loss(v, -v)) == pytest.approx(2.0, abs=1e-6)
    # orthogonal channel vectors at every position: cos = 0, loss 1
    a, b = torch.zeros(2, 3, 1, 1), torch.zeros(2, 3, 1, 1)
    a[:, 0], b[:, 1] = 1.0, 5.0
    assert float(cosine_velocity_loss(a, b)) == pytest.approx(1.0)


def test_transport_loss_adds_the_weighted_cosine_term():
    x0 = torch.full((256, 2, 4, 4), 2.0)
    zero = lambda x, t, c: torch.zeros_like(x)  # noqa: E731  cos(0, v) = 0: the term adds its weight
    g = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    plain = float(Transport(TransportConfig()).loss(zero, x0, generator=g()))
    mixed = float(Transport(TransportConfig(cosine_weight=0.5)).loss(zero, x0, generator=g()))
    assert mixed == pytest.approx(plain + 0.5, rel=1e-6)
    exact = lambda x, t, c: (x - x0) / t.view(-1, 1, 1, 1)  # noqa: E731  MSE 0 and cos 1
    assert float(Transport(TransportConfig(cosine_weight=1.0)).loss(exact, x0)) < 1e-5
    with pytest.raises(ConfigError, match="transport.cosine_weight"):
        TransportConfig(cosine_weight=-1.0).validate()


def test_imagenet_lightningdit_config_trains_with_lightningdits_setting():
    root = SHIPPED_CONFIGS / "imagenet256"
    configs = [load_config(GeneratorRunConfig, root / name) for name in ("lightningdit_xl1.yaml", "sit_xl1.yaml")]
    lightning, sit = (cfg.transport for cfg in configs)
    for cfg in configs:  # the paper's 64 / 80 epoch rows (2,500 steps per epoch at batch 512) are kept
        assert {160_000, 200_000} <= set(cfg.train.milestones) and cfg.train.batch_size == 512
    assert (lightning.time_sampling, lightning.logit_mean, lightning.logit_std, lightning.cosine_weight,
            lightning.shift) == ("logit_normal", 0.0, 1.0, 1.0, 0.4)
    assert (sit.time_sampling, sit.cosine_weight, sit.shift) == ("uniform", 0.0, 0.4)
