"""Flow-matching transport: the probability path, the training loss, t-sampling and the time shift.

TIME CONVENTION (the only place it is stated; every other module follows it):

    x_t = (1 - t) * x0 + t * eps,   t in [0, 1],   t = 0 is data x0,   t = 1 is noise eps ~ N(0, I)
    velocity  v = dx_t/dt = eps - x0                       (the network predicts v; FAE paper, Sec. 3)
    from v:   x0 = x_t - t * v,    eps = x_t + (1 - t) * v

Sampling integrates dx/dt = v from t = 1 down to t = 0.

TIME SHIFT. The paper uses shift s = 0.4 in the LightningDiT/SVG rational form, written with
tau = 0 as noise:  tau' = s * tau / (1 + (s - 1) * tau).  With our t = 1 - tau this becomes

    t' = 1 - tau' = t / (s - (s - 1) * t)

(equivalently the SD3-style shift k * t / (1 + (k - 1) * t) with k = 1 / s = 2.5).
Numeric example, s = 0.4, t = 0.5: tau = 0.5 -> tau' = 0.2 / 0.7 = 0.2857, so t' = 0.7143 =
0.5 / (0.4 + 0.6 * 0.5). With s < 1 times move towards noise (more steps and more loss weight at
high noise, as wanted for a 32-channel latent). s = 1 is the identity. The same function maps the
sampled training times and the sampler's time grid, so training and sampling agree.

LIGHTNINGDIT'S SETTING. The paper's shifted rows follow LightningDiT (App. D), which trains with
logit-normal times (t = sigmoid(n), n ~ N(0, 1); SD3's form, symmetric about t = 0.5 so the time
convention does not matter) and adds a cosine-similarity velocity loss,
mean over positions of 1 - cos(v_theta, v) with the cosine taken over the latent channels, at weight 1.
Both are options here (``time_sampling: logit_normal``, ``cosine_weight``); imagenet256/
lightningdit_xl1.yaml turns them on, sit_xl1.yaml keeps SiT's uniform t and plain MSE.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Literal

import torch
import torch.nn.functional as F

from fae.errors import ConfigError

VelocityFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (x_t [B, ...], t [B]) -> v


@dataclass
class TransportConfig:
    """How training times are drawn (saved with the exported generator).

    Args:
        time_sampling: "uniform" on [0, 1] or "logit_normal" (SD3: sigmoid of N(mean, std)).
        logit_mean, logit_std: parameters of the logit-normal (LightningDiT: 0 and 1).
        shift: the paper's s in the t = 0-is-noise rational form (paper: 0.4; 1 = no shift);
            applied to training times and, by default, to the sampler's grid.
        cosine_weight: weight of the auxiliary cosine velocity loss (LightningDiT: 1; 0 = plain MSE,
            SiT). It belongs to the training objective, so it sits with the transport.
    """

    time_sampling: Literal["uniform", "logit_normal"] = "uniform"
    logit_mean: float = 0.0
    logit_std: float = 1.0
    shift: float = 1.0
    cosine_weight: float = 0.0

    def validate(self) -> None:
        if self.cosine_weight < 0:
            raise ConfigError(f"config key 'transport.cosine_weight' must be >= 0, got {self.cosine_weight}")
        if self.shift <= 0:
            raise ConfigError(f"config key 'transport.shift' must be > 0, got {self.shift}")
        if self.logit_std <= 0:
            raise ConfigError(f"config key 'transport.logit_std' must be > 0, got {self.logit_std}")


def shift_time(t: torch.Tensor, shift: float) -> torch.Tensor:
    """t' = t / (s - (s - 1) t): the paper's rational shift converted to t = 1 noise (see top)."""
    if shift == 1.0:
        return t
    return t / (shift - (shift - 1.0) * t)


def interpolate(x0: torch.Tensor, eps: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """x_t = (1 - t) x0 + t eps, with t [B] broadcast over the other dims."""
    t = _expand(t, x0)
    return (1 - t) * x0 + t * eps


def target_velocity(x0: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    return eps - x0


def velocity_to_x0(x: torch.Tensor, t: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    return x - _expand(t, x) * v


def velocity_to_eps(x: torch.Tensor, t: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    return x + (1 - _expand(t, x)) * v


def _expand(t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """[B] -> [B, 1, 1, ...] matching ``like``'s rank."""
    return t.reshape(-1, *([1] * (like.dim() - 1))).to(like.dtype)


def sample_time(n: int, cfg: TransportConfig, device: torch.device | str = "cpu",
                generator: torch.Generator | None = None) -> torch.Tensor:
    """n training times in [0, 1] (before the shift)."""
    if cfg.time_sampling == "logit_normal":
        normal = torch.randn(n, generator=generator, device=device)
        return torch.sigmoid(cfg.logit_mean + cfg.logit_std * normal)
    return torch.rand(n, generator=generator, device=device)


def time_grid(steps: int, shift: float, device: torch.device | str = "cpu") -> torch.Tensor:
    """[steps + 1] times from 1 (noise) to 0 (data): a uniform grid mapped by :func:`shift_time`."""
    if steps < 1:
        raise ConfigError(f"number of sampling steps must be >= 1, got {steps}")
    uniform = torch.linspace(1.0, 0.0, steps + 1, dtype=torch.float64)
    return shift_time(uniform, shift).to(device=device, dtype=torch.float32)


def cosine_velocity_loss(v: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """LightningDiT's auxiliary loss: mean over batch and positions of 1 - cos(v, target), the
    cosine over the channel dim 1 of [B, c, h, w] (0 when the directions agree, 2 when opposite)."""
    return (1 - F.cosine_similarity(v.float(), target.float(), dim=1)).mean()


class Transport:
    """The training objective: E_t,eps || v_theta(x_t, t) - (eps - x0) ||^2 with shifted t, plus
    ``cosine_weight`` x :func:`cosine_velocity_loss` (LightningDiT's setting; off by default).

    Args:
        config: a :class:`TransportConfig`.
    """

    def __init__(self, config: TransportConfig):
        config.validate()
        self.config = config

    def training_times(self, n: int, device: torch.device | str,
                       generator: torch.Generator | None = None) -> torch.Tensor:
        return shift_time(sample_time(n, self.config, device, generator), self.config.shift)

    def loss(self, model: Callable[..., torch.Tensor], x0: torch.Tensor, cond: torch.Tensor | None = None,
             generator: torch.Generator | None = None) -> torch.Tensor:
        """Mean squared velocity error over the batch and every latent element, plus the weighted
        cosine velocity loss (a scalar)."""
        t = self.training_times(x0.shape[0], x0.device, generator)  # [B]
        eps = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
        x_t = interpolate(x0, eps, t)  # [B, c, h, w]
        v = model(x_t, t, cond)  # [B, c, h, w]
        target = target_velocity(x0, eps)  # [B, c, h, w]
        loss = (v.float() - target.float()).square().mean()
        if self.config.cosine_weight > 0:
            loss = loss + self.config.cosine_weight * cosine_velocity_loss(v, target)
        return loss
