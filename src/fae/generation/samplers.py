"""Samplers: integrate the learned velocity from noise (t = 1) to data (t = 0), with optional
classifier-free guidance. Time convention and shift: ``fae.generation.transport``.

* ``euler``: Euler ODE, x <- x + h v   (h = t_next - t < 0).
* ``heun``: Heun's second-order ODE step (Karras et al. 2022, Alg. 1).
* ``euler_maruyama``: the reverse SDE with the same marginals as the ODE. With diffusion
  g(t)^2 = 2 * norm * t and the score s = -eps_hat / t (eps_hat from v, see transport),
      dx = [v - g^2 / 2 * s] dt + g dW   =   [v + norm * eps_hat] dt + sqrt(2 norm t) dW,
  integrated backwards in t; the last step is a plain Euler step (no noise), as in SiT.

Guidance (CFG, Ho & Salimans 2022) is applied to ALL latent channels: v = v_u + w (v_c - v_u).
The scale w may depend on t: a single scale inside an interval (Kynkaenniemi et al. 2024; outside
it the conditional velocity is used, i.e. w = 1), or a piecewise-constant schedule (the FAE paper's
"three-partitioned" CFG). Where w = 1 the unconditional pass is skipped.

The paper's schedule as printed (App. D): w = 0.9 for t in [0.9, 1] and 2.5 for t in [0, 0.7]; the
middle piece is not given. :data:`PAPER_CFG_SCHEDULE` uses w = 1 (no guidance) there, matching
the ablation rule "CFG enabled from t = 0.7 to 0"; the alternative reading (some w between the two,
e.g. 1.5) is one override: ``'sampling.cfg_schedule=[[0.9,1.0,0.9],[0.0,0.7,2.5],[0.7,0.9,1.5]]'``.

WHICH TIME the interval and the pieces refer to (``cfg_time``): ``shifted`` (default, the behaviour
of every export so far) compares them with the shifted time the network sees, as LightningDiT's
``forward_with_cfg`` compares its interval with the model's t; ``unshifted`` compares them with the
step's time on the uniform grid before the shift (the same numbers as an unshifted grid holds, so
with shift 1 the two readings agree). At 250 steps and shift 0.4 the paper schedule guides
55 / 75 / 120 steps at w = 0.9 / 1 / 2.5 when shifted, 25 / 50 / 175 when unshifted
(tests/test_cfg_time.py).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Callable, Literal

import torch

from fae.config import check_choices
from fae.errors import ConfigError
from fae.generation.transport import VelocityFn, time_grid, velocity_to_eps

CfgTime = Literal["shifted", "unshifted"]

NoiseFn = Callable[[int], torch.Tensor]  # step index -> fresh N(0, I) noise shaped like x

# [t_low, t_high, w], first piece wins: 0.9 on [0.9, 1], 2.5 on [0, 0.7] (so t = 0.7 gets 2.5),
# w = 1 on the unstated middle (0.7, 0.9) (imagenet256/sample_cfg.yaml uses it).
PAPER_CFG_SCHEDULE: list[tuple[float, float, float]] = [(0.9, 1.0, 0.9), (0.0, 0.7, 2.5), (0.7, 0.9, 1.0)]


@dataclass
class SamplerConfig:
    """How to sample (defaults are the paper's CFG setting: Euler ODE, 250 steps).

    Args:
        method: "euler", "heun" or "euler_maruyama" (paper: SDE without CFG, Euler ODE with CFG).
        steps: integration steps (Heun uses two model calls per step).
        shift: time-grid shift in the paper's form (null = the shift the generator was trained with).
        cfg_scale: guidance scale w (1 = no guidance).
        cfg_interval: [t_low, t_high]: ``cfg_scale`` applies only for t in this range (e.g. [0, 0.7]).
        cfg_schedule: piecewise-constant scales as [t_low, t_high, scale] triples; when given it
            replaces cfg_scale / cfg_interval; the first piece containing t wins (bounds are
            inclusive) and times outside every piece use w = 1.
        cfg_time: which time ``cfg_interval`` and ``cfg_schedule`` refer to: "shifted" (the time
            the network sees) or "unshifted" (the uniform grid time before the shift); module doc.
        diffusion_norm: SDE noise level ``norm`` in g(t)^2 = 2 * norm * t.
    """

    method: Literal["euler", "heun", "euler_maruyama"] = "euler"
    steps: int = 250
    shift: float | None = None
    cfg_scale: float = 1.0
    cfg_interval: tuple[float, float] = (0.0, 1.0)
    cfg_schedule: list[tuple[float, float, float]] = field(default_factory=list)
    cfg_time: CfgTime = "shifted"
    diffusion_norm: float = 1.0

    def validate(self) -> None:
        if self.steps < 1:
            raise ConfigError(f"config key 'sampling.steps' must be >= 1, got {self.steps}")
        if self.shift is not None and self.shift <= 0:
            raise ConfigError(f"config key 'sampling.shift' must be > 0, got {self.shift}")
        low, high = self.cfg_interval
        if not 0.0 <= low <= high <= 1.0:
            raise ConfigError(f"config key 'sampling.cfg_interval' must satisfy 0 <= low <= high <= 1, "
                              f"got {list(self.cfg_interval)}")
        for i, (lo, hi, _) in enumerate(self.cfg_schedule):
            if not 0.0 <= lo <= hi <= 1.0:
                raise ConfigError(f"config key 'sampling.cfg_schedule[{i}]': need 0 <= t_low <= t_high "
                                  f"<= 1, got [{lo}, {hi}]")
        check_choices(self, "sampling")

    def grid_shift(self, trained_shift: float) -> float:
        """The shift of the sampling grid: ``shift`` when set, else the generator's trained one."""
        return self.shift or trained_shift

    @property
    def guided(self) -> bool:
        if self.cfg_schedule:
            return any(scale != 1.0 for _, _, scale in self.cfg_schedule)
        return self.cfg_scale != 1.0

    def unguided(self) -> "SamplerConfig":
        """The same sampler without guidance."""
        return replace(self, cfg_scale=1.0, cfg_schedule=[])


def guidance_scale(cfg: SamplerConfig, t: float) -> float:
    """The CFG scale at time t (1.0 = plain conditional velocity)."""
    if cfg.cfg_schedule:
        for low, high, scale in cfg.cfg_schedule:
            if low <= t <= high:
                return scale
        return 1.0
    low, high = cfg.cfg_interval
    return cfg.cfg_scale if low <= t <= high else 1.0


def cat_conditions(a, b):
    """Concatenate two batches of conditions along the batch: label tensors [B], or NamedTuples of
    tensors such as ``TextCondition`` (field by field)."""
    if isinstance(a, tuple):
        return type(a)(*(torch.cat([x, y]) for x, y in zip(a, b)))
    return torch.cat([a, b])


def unshifted_times(config: SamplerConfig, shift: float) -> dict[float, float]:
    """Shifted grid time -> the same step's time on the unshifted grid, for every point of the grid
    :func:`integrate` walks (exact float keys: the integrator evaluates only grid points)."""
    shifted = time_grid(config.steps, shift).tolist()
    uniform = time_grid(config.steps, 1.0).tolist()
    return dict(zip(shifted, uniform))


class GuidedVelocity:
    """(x, t) -> guided velocity of ``model(x, t, cond)``; a :data:`VelocityFn` for the integrators.

    Args:
        model: the generator network ``(x [B, ...], t [B], cond [B]) -> v``.
        cond: the conditions of the batch (labels [B], or a ``TextCondition``); None for an
            unconditional model.
        null_cond: the null conditions for CFG (same shape as ``cond``).
        config: the sampler config holding the guidance scale / interval / schedule.
        shift: the grid shift :func:`integrate` uses (``config.grid_shift(trained)``); needed only
            when ``config.cfg_time`` is "unshifted", to map each step's time back to the uniform grid.
    """

    def __init__(self, model: Callable[..., torch.Tensor], cond: torch.Tensor | None,
                 null_cond: torch.Tensor | None, config: SamplerConfig, shift: float | None = None):
        self.model, self.cond, self.null_cond, self.config = model, cond, null_cond, config
        self.uniform_time: dict[float, float] | None = None
        if config.cfg_time == "unshifted":
            if shift is None:
                raise ValueError("GuidedVelocity: cfg_time 'unshifted' needs the sampling grid's shift")
            self.uniform_time = unshifted_times(config, shift)

    def guidance_time(self, t: float) -> float:
        """The time the guidance interval / schedule is read at (``config.cfg_time``)."""
        if self.uniform_time is None:
            return t
        if t not in self.uniform_time:
            raise ValueError(f"GuidedVelocity: t = {t} is not on the {self.config.steps}-step sampling grid")
        return self.uniform_time[t]

    def __call__(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        scale = guidance_scale(self.config, self.guidance_time(float(t[0])))
        if scale == 1.0 or self.cond is None:
            return self.model(x, t, self.cond)
        both = self.model(torch.cat([x, x]), torch.cat([t, t]),
                          cat_conditions(self.cond, self.null_cond))  # [2B, ...]
        v_cond, v_uncond = both.chunk(2)
        return v_uncond + scale * (v_cond - v_uncond)  # every channel is guided


def integrate(velocity: VelocityFn, x: torch.Tensor, config: SamplerConfig, shift: float = 1.0,
              noise: NoiseFn | None = None) -> torch.Tensor:
    """Run the sampler from noise ``x`` [B, ...] at t = 1 to t = 0; returns x0 [B, ...].

    Args:
        velocity: (x, t [B]) -> v.
        x: the starting noise.
        config: method and steps (its ``shift``, when set, overrides the ``shift`` argument).
        shift: the trained shift, used when ``config.shift`` is null.
        noise: per-step noise for the SDE (defaults to ``torch.randn_like``).
    """
    config.validate()
    grid = time_grid(config.steps, config.grid_shift(shift), x.device)  # [steps + 1], 1 -> 0
    noise = noise or (lambda step: torch.randn_like(x))
    for i in range(config.steps):
        t, t_next = grid[i].expand(x.shape[0]), grid[i + 1].expand(x.shape[0])  # [B]
        x = _step(velocity, x, t, t_next, config, noise, last=i == config.steps - 1, index=i)
    return x


@torch.no_grad()
def _step(velocity: VelocityFn, x: torch.Tensor, t: torch.Tensor, t_next: torch.Tensor,
          config: SamplerConfig, noise: NoiseFn, last: bool, index: int) -> torch.Tensor:
    h = float(t_next[0] - t[0])  # negative: time runs from noise to data
    v = velocity(x, t)
    if config.method == "euler" or (config.method == "euler_maruyama" and last):
        return x + h * v
    if config.method == "heun":
        x_euler = x + h * v
        return x + h * 0.5 * (v + velocity(x_euler, t_next))
    # Euler-Maruyama on the reverse SDE (module docstring).
    drift = v + config.diffusion_norm * velocity_to_eps(x, t, v)
    sigma = math.sqrt(2.0 * config.diffusion_norm * float(t[0]) * -h)
    return x + h * drift + sigma * noise(index).to(x)

