"""Samplers against an analytic target, CFG, per-sample seeding and rank sharding, and the one
sample-then-decode path (SampleDecoder) with its label, settings and pairing helpers."""

import pytest
import torch
from torch import nn

from fae.commands.sample import SampleConfig
from fae.config import SHIPPED_CONFIGS, load_config
from fae.distributed import shard_range
from fae.errors import ConfigError, LatentCacheError
from fae.generation import Generator, GeneratorConfig
from fae.generation.decode import SampleDecoder, check_pair, class_labels, class_list, sampler_config
from fae.generation.samplers import PAPER_CFG_SCHEDULE, GuidedVelocity, SamplerConfig, guidance_scale, integrate
from fae.generation.seeding import balanced_labels
from fae.generation.transport import TransportConfig, time_grid
from fae.images import quantize


def gaussian_velocity(mu: float, s: float):
    """The exact velocity E[eps - x0 | x_t] for data x0 ~ N(mu, s^2), x_t = (1-t) x0 + t eps."""
    def velocity(x, t, cond=None):
        t = t.view(-1, *([1] * (x.dim() - 1)))
        a = 1 - t
        var = a * a * s * s + t * t
        resid = x - a * mu
        return t * resid / var - (mu + a * s * s * resid / var)
    return velocity


@pytest.mark.parametrize("method,steps", [("euler", 100), ("heun", 25), ("euler_maruyama", 200)])
@pytest.mark.parametrize("shift", [1.0, 0.4])
def test_samplers_reach_the_analytic_gaussian(method, steps, shift):
    torch.manual_seed(0)
    mu, s = 1.5, 0.5
    noise = torch.randn(8000, 1)
    out = integrate(gaussian_velocity(mu, s), noise, SamplerConfig(method=method, steps=steps), shift=shift)
    assert float(out.mean()) == pytest.approx(mu, abs=0.03)
    assert float(out.std()) == pytest.approx(s, rel=0.05)


def test_ode_samplers_converge_to_the_exact_transport_map_at_their_order():
    # The exact ODE maps noise n to mu + s * n. Doubling the steps halves Euler's error (first
    # order) and cuts Heun's by about 3-4x (second order, slowed by the stiff end near t = 0).
    noise = torch.linspace(-2, 2, 9, dtype=torch.float64).view(9, 1)
    def error(method, steps):
        out = integrate(gaussian_velocity(0.3, 0.2), noise, SamplerConfig(method=method, steps=steps), shift=0.4)
        return float((out - (0.3 + 0.2 * noise)).abs().max())
    assert 1.8 < error("euler", 20) / error("euler", 40) < 2.2
    assert error("heun", 20) / error("heun", 40) > 2.5
    assert error("heun", 80) < 1e-3


def conditional_model(x, t, cond):
    """A toy conditional velocity: class c shifts the velocity by -c (null class 9 by 0)."""
    offsets = torch.where(cond == 9, torch.zeros_like(cond), cond).float()
    return gaussian_velocity(0.0, 0.5)(x, t) - offsets.view(-1, 1)


def test_cfg_scale_one_equals_the_conditional_model():
    torch.manual_seed(0)
    x, cond = torch.randn(6, 1), torch.tensor([0, 1, 2, 3, 4, 5])
    cfg = SamplerConfig(method="euler", steps=10, cfg_scale=1.0)
    guided = integrate(GuidedVelocity(conditional_model, cond, torch.full_like(cond, 9), cfg), x, cfg)
    plain = integrate(lambda x, t: conditional_model(x, t, cond), x, cfg)
    assert torch.equal(guided, plain)


def test_guidance_interval_and_all_channels_are_guided():
    x, cond, null = torch.randn(4, 3), torch.tensor([1, 2, 3, 4]), torch.full((4,), 9)
    cfg = SamplerConfig(cfg_scale=3.0, cfg_interval=(0.0, 0.7))
    velocity = GuidedVelocity(conditional_model, cond, null, cfg)
    outside = torch.full((4,), 0.9)
    assert torch.equal(velocity(x, outside), conditional_model(x, outside, cond))
    inside = torch.full((4,), 0.5)
    v_c, v_u = conditional_model(x, inside, cond), conditional_model(x, inside, null)
    expected = v_u + 3.0 * (v_c - v_u)
    assert torch.allclose(velocity(x, inside), expected)
    assert ((velocity(x, inside) - v_c).abs() > 0).all()  # every channel moved by guidance


def test_piecewise_schedule_overrides_the_single_scale():
    cfg = SamplerConfig(cfg_scale=7.0, cfg_schedule=[(0.9, 1.0, 0.9), (0.7, 0.9, 1.5), (0.0, 0.7, 2.5)])
    assert [guidance_scale(cfg, t) for t in (1.0, 0.95, 0.8, 0.3, 0.0)] == [0.9, 0.9, 1.5, 2.5, 2.5]
    gap = SamplerConfig(cfg_schedule=[(0.0, 0.5, 2.0)])
    assert guidance_scale(gap, 0.6) == 1.0 and guidance_scale(gap, 0.5) == 2.0


def test_the_paper_guidance_default_reproduces_the_printed_pieces():
    """App. D: w = 0.9 on t in [0.9, 1], 2.5 on [0, 0.7]; the unstated middle is w = 1 (no CFG)."""
    path = SHIPPED_CONFIGS / "imagenet256" / "sample_cfg.yaml"
    stored = SamplerConfig(method="euler_maruyama", steps=250)  # what the generator export stores
    cfg = sampler_config(Generator(GeneratorConfig(depth=1, dim=32, heads=2, latent_channels=4, latent_size=4),
                                   TransportConfig(), sampling=stored), load_config(SampleConfig, path).sampling)
    assert (cfg.method, cfg.steps) == ("euler", 250)
    assert [tuple(piece) for piece in cfg.cfg_schedule] == PAPER_CFG_SCHEDULE
    printed = {1.0: 0.9, 0.95: 0.9, 0.9: 0.9, 0.89: 1.0, 0.8: 1.0, 0.71: 1.0, 0.7: 2.5, 0.3: 2.5, 0.0: 2.5}
    assert {t: guidance_scale(cfg, t) for t in printed} == printed
    # on the 250-step grid of the trained shift 0.4: every step takes its printed piece's scale
    for t in time_grid(250, 0.4).tolist():
        assert guidance_scale(cfg, t) == (0.9 if t >= 0.9 else 2.5 if t <= 0.7 else 1.0)


def tiny_generator() -> Generator:
    torch.manual_seed(0)
    gen = Generator(GeneratorConfig(depth=2, dim=32, heads=2, latent_channels=4, latent_size=4,
                                    num_classes=3, style="lightningdit"),
                    TransportConfig(shift=0.4), sampling=SamplerConfig(method="euler_maruyama", steps=4))
    for p in gen.model.parameters():
        p.data.normal_(std=0.1)
    return gen.eval()


def test_samples_do_not_depend_on_batch_size_and_follow_the_seed():
    gen = tiny_generator()
    labels = balanced_labels(range(7), [0, 1, 2])
    assert labels.tolist() == [0, 1, 2, 0, 1, 2, 0]
    whole = gen.sample(range(7), labels, seed=3, batch_size=7)
    pieces = gen.sample(range(7), labels, seed=3, batch_size=2)
    assert torch.allclose(whole, pieces, atol=1e-5)
    again = gen.sample(range(7), labels, seed=3, batch_size=3)
    assert torch.allclose(whole, again, atol=1e-5)
    other = gen.sample(range(7), labels, seed=4, batch_size=7)
    assert (whole - other).abs().amax() > 0.1


def test_two_ranks_take_disjoint_indices_that_cover_everything_and_agree_with_one_rank():
    for n in (0, 1, 7, 10):
        parts = [shard_range(n, r, 2) for r in range(2)]
        assert set(parts[0]).isdisjoint(parts[1])
        assert sorted([*parts[0], *parts[1]]) == list(range(n))
    gen = tiny_generator()
    labels = balanced_labels(range(5), [0, 1, 2])
    single = gen.sample(range(5), labels, seed=1, batch_size=5)
    parts = [gen.sample(r, labels[r.start:r.stop], seed=1, batch_size=2) for r in
             (shard_range(5, rank, 2) for rank in range(2))]
    assert torch.allclose(torch.cat(parts), single, atol=1e-5)


class LinearDecoder(nn.Module):
    """Stands in for an FAE: z [b, 4, 4, 4] -> sigmoid(linear) images [b, 1, 8, 8] in [0, 1]."""

    def __init__(self):
        super().__init__()
        self.map = nn.Linear(64, 64)
        nn.init.normal_(self.map.weight, std=0.3, generator=torch.Generator().manual_seed(5))

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.map(z.flatten(1))).view(-1, 1, 8, 8)


def test_sample_decoder_equals_sample_then_decode_whatever_the_batch_size():
    gen, decoder = tiny_generator(), LinearDecoder()
    labels = torch.tensor([2, 0, 1, 1, 0, 2, 2])
    indices = [3, 9, 0, 4, 12, 5, 7]  # any indices: each seeds its own noise
    with torch.no_grad():
        latents = gen.sample(indices, labels, seed=11)
        expected = quantize(decoder.decode(latents))  # uint8 [7, 1, 8, 8]
    for batch_size in (1, 3, 7, 64):
        out = SampleDecoder(gen, decoder, batch_size=batch_size).all(indices, labels, seed=11)
        assert out.images.dtype == torch.uint8 and out.images.shape == (7, 1, 8, 8)
        assert torch.equal(out.images, expected)
        assert torch.equal(out.labels, labels)
        assert torch.allclose(out.latents, latents, atol=1e-5)
    parts = list(SampleDecoder(gen, decoder, batch_size=3).batches(indices, labels, seed=11))
    assert [len(p) for p in parts] == [3, 3, 1]
    other_seed = SampleDecoder(gen, decoder).all(indices, labels, seed=12).images
    assert not torch.equal(other_seed, expected)


def test_sample_decoder_labels_default_to_cycled_classes_and_are_checked():
    gen, decoder = tiny_generator(), LinearDecoder()
    out = SampleDecoder(gen, decoder).all(range(5))
    assert out.labels.tolist() == [0, 1, 2, 0, 1]  # class i % 3, as class_labels gives
    assert torch.equal(out.images, SampleDecoder(gen, decoder).all(range(5), [0, 1, 2, 0, 1]).images)
    with pytest.raises(ConfigError, match="one label per sample"):
        SampleDecoder(gen, decoder).all(range(5), torch.tensor([0, 1]))
    torch.manual_seed(0)
    uncond = Generator(GeneratorConfig(depth=1, dim=32, heads=2, latent_channels=4, latent_size=4,
                                       num_classes=0), sampling=SamplerConfig(steps=2)).eval()
    out = SampleDecoder(uncond, decoder).all(range(3))
    assert out.labels.tolist() == [-1, -1, -1] and out.images.shape == (3, 1, 8, 8)
    with pytest.raises(ConfigError, match="unconditional"):
        SampleDecoder(uncond, decoder).all(range(3), [0, 0, 0])
    empty = SampleDecoder(gen, decoder).all(range(0))
    assert len(empty) == 0 and empty.images.dtype == torch.uint8


def test_labels_settings_and_pairing_helpers():
    gen = tiny_generator()
    assert class_list(gen) == [0, 1, 2] and class_list(gen, [2]) == [2]
    assert class_labels(gen, range(4, 8), [0, 2]).tolist() == [0, 2, 0, 2]
    with pytest.raises(ConfigError, match=r"\[5\]"):
        class_list(gen, [0, 5])
    cfg = sampler_config(gen, {"steps": 7, "cfg_scale": 2.0})
    assert (cfg.method, cfg.steps, cfg.cfg_scale) == ("euler_maruyama", 7, 2.0)  # the stored method kept
    assert sampler_config(gen).steps == 4
    with pytest.raises(ConfigError, match="sampling.bogus"):
        sampler_config(gen, {"bogus": 1})
    gen.fae_identity = {"identity": "a" * 64}
    check_pair(gen, "a" * 64, (4, 4, 4))
    with pytest.raises(LatentCacheError, match="another FAE"):
        check_pair(gen, "b" * 64, (4, 4, 4), "gen", "fae")
    with pytest.raises(LatentCacheError, match=r"\[4, 8, 8\]"):
        check_pair(gen, "a" * 64, (4, 8, 8))
