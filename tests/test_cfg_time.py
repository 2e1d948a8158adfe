"""Which time the CFG interval and the piecewise schedule refer to (``sampling.cfg_time``): the
shifted time the network sees (default, as before) or the uniform grid time before the shift."""
import importlib.util
import sys
from collections import Counter
from pathlib import Path

import pytest
import torch

from fae.config import SHIPPED_CONFIGS, load_config
from fae.commands.sample import SampleConfig
from fae.errors import ConfigError
from fae.generation.samplers import PAPER_CFG_SCHEDULE, GuidedVelocity, SamplerConfig, integrate

sys.path.insert(0, str(Path(__file__).parent))
from tiny import perturbed, tiny_generator  # noqa: E402

BENCH = Path(__file__).parent.parent / "bench"
PAPER = [list(piece) for piece in PAPER_CFG_SCHEDULE]
NULL = 9


def steps_per_scale(cfg: SamplerConfig, shift: float) -> Counter:
    """Scale w -> number of Euler steps that use it, read off the real guidance and integrator code
    (a stand-in model whose velocity is w itself: v_u = 0, v_c = 1 -> v_u + w (v_c - v_u) = w)."""
    scales = []

    def model(x, t, cond):
        return (cond != NULL).float().view(-1, 1)

    def velocity(x, t):
        v = GuidedVelocity(model, torch.zeros(1), torch.full((1,), NULL), cfg, shift=shift)(x, t)
        scales.append(round(float(v[0, 0]), 6))
        return v

    integrate(velocity, torch.zeros(1, 1), cfg, shift=shift)
    return Counter(scales)


def test_paper_schedule_pieces_at_250_steps_shift_04_match_the_hand_count():
    # Step i (0..249) reads the schedule at the grid's left time. Unshifted: u_i = 1 - i / 250, so
    # w = 0.9 for i < 25 (u > 0.9; u = 0.9 itself is the float32 0.89999998, just below the
    # piece), w = 2.5 for i >= 75 (u <= 0.7), w = 1 for the 50 steps in between: 25 / 50 / 175.
    # Shifted: t_i = u_i / (0.4 + 0.6 u_i) >= 0.9 iff u_i >= 0.9 * 0.4 / (1 - 0.9 * 0.6) = 0.7826,
    # i.e. i <= 54 (55 steps); t_i <= 0.7 iff u_i <= 0.28 / 0.58 = 0.4828, i.e. i >= 130 (120
    # steps); 75 steps in between: 55 / 75 / 120.
    shifted = SamplerConfig(steps=250, cfg_schedule=PAPER)
    assert steps_per_scale(shifted, 0.4) == {0.9: 55, 1.0: 75, 2.5: 120}
    unshifted = SamplerConfig(steps=250, cfg_schedule=PAPER, cfg_time="unshifted")
    assert steps_per_scale(unshifted, 0.4) == {0.9: 25, 1.0: 50, 2.5: 175}


def test_interval_reading_follows_cfg_time():
    # w = 3 on t in [0, 0.5], 10 steps, shift 0.4: unshifted u_i = 1 - i/10 <= 0.5 for i >= 5 (5
    # steps); shifted t_i <= 0.5 iff u_i <= 0.2 / 0.7 = 0.2857, i.e. i >= 8 (2 steps).
    base = SamplerConfig(steps=10, cfg_scale=3.0, cfg_interval=(0.0, 0.5))
    assert steps_per_scale(base, 0.4) == {1.0: 8, 3.0: 2}
    assert steps_per_scale(SamplerConfig(**{**vars(base), "cfg_time": "unshifted"}), 0.4) == {1.0: 5, 3.0: 5}


@pytest.mark.parametrize("method", ["euler", "heun"])
def test_without_a_shift_both_readings_agree(method):
    for schedule in (PAPER, [[0.0, 0.45, 2.0], [0.6, 1.0, 0.5]]):
        counts = [steps_per_scale(SamplerConfig(method=method, steps=40, cfg_schedule=schedule, cfg_time=time), 1.0)
                  for time in ("shifted", "unshifted")]
        assert counts[0] == counts[1] and len(counts[0]) > 1


def test_default_samples_are_those_of_the_code_before_cfg_time():
    # Golden numbers written by the sampler before ``cfg_time`` existed (commit 46e078c), for a
    # perturbed tiny SiT (trained shift 0.4) with the paper schedule over 12 steps.
    generator = tiny_generator("diffusion")
    perturbed(generator.model, seed=1)
    labels = torch.tensor([0, 2])
    sample = generator.sample(range(2), labels, seed=0, config=SamplerConfig(steps=12, cfg_schedule=PAPER))
    assert float(sample.double().sum()) == pytest.approx(-0.30727036483585835, abs=1e-4)
    expected_head = torch.tensor([2.689627170562744, 0.09207053482532501, 0.40377578139305115, -1.1534991264343262])
    torch.testing.assert_close(sample.flatten()[:4], expected_head, rtol=0, atol=1e-5)
    unshifted = SamplerConfig(steps=12, cfg_schedule=PAPER, cfg_time="unshifted")
    other = generator.sample(range(2), labels, seed=0, config=unshifted)
    assert (other - sample).abs().max() > 1e-3  # the other reading guides other steps


def test_bad_cfg_time_and_the_shipped_config_name_their_setting():
    with pytest.raises(ConfigError, match="sampling.cfg_time"):
        SamplerConfig(cfg_time="noisy").validate()
    with pytest.raises(ValueError, match="needs the sampling grid's shift"):
        GuidedVelocity(lambda x, t, c: x, None, None, SamplerConfig(cfg_time="unshifted"))
    shipped = load_config(SampleConfig, SHIPPED_CONFIGS / "imagenet256" / "sample_cfg.yaml", [])
    assert shipped.sampling["cfg_time"] == "shifted" and shipped.sampling["cfg_schedule"] == PAPER


def test_guidance_search_lists_both_readings_without_loading_anything(capsys):
    spec = importlib.util.spec_from_file_location("guidance_search", BENCH / "guidance_search.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    assert bench.main(["--list", "--paper-schedule", "--scales", "1", "2", "--intervals", "0,0.7"]) == 0
    rows = capsys.readouterr().out.splitlines()
    assert [row.split(":")[0] for row in rows] == [
        "no guidance", "w=2 on shifted t in [0, 0.7]", "w=2 on unshifted t in [0, 0.7]",
        "paper schedule (shifted t)", "paper schedule (unshifted t)"]
