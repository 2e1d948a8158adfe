"""Flow transport: the time convention, the paper's shift converted to t = 1 noise, the loss."""
import pytest
import torch

from fae.generation.transport import (Transport, TransportConfig, interpolate, sample_time, shift_time,
                                      target_velocity, time_grid, velocity_to_eps, velocity_to_x0)


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
