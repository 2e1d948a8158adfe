"""Shared helpers for tests/test_training_*.py: build toy stages and compare checkpoint states."""
from __future__ import annotations

from pathlib import Path

import torch

from fae.config import load_config
from fae.distributed import torch_threads
from toy_stage import ToyConfig, ToyStage, register

register()  # `fae train toy` for the CLI tests


def toy_stage(run_dir: Path, *overrides: str) -> ToyStage:
    base = ["train.steps=6", "train.batch_size=8", "train.log_every=1", "train.ckpt_every=2",
            "train.progress=false", "train.ema_decay=0.9", "train.optim.lr=0.003",
            "train.tensorboard=false", f"train.run_dir={run_dir}"]
    return ToyStage(load_config(ToyConfig, None, base + list(overrides)))


# No randomness inside a step (no dropout, no flips), no clipping, no EMA: a step's gradient is a
# pure function of its 16 items, however they are split over micro-batches and ranks.
EXACT_STEP = ["train.batch_size=16", "augment=false", "dropout=0.0", "train.optim.grad_clip=null",
              "train.ema_decay=null", "train.ckpt_every=0"]


def first_step_gradients(trainer) -> tuple[list, dict[str, torch.Tensor], float]:
    """Step 0's micro-batches on this rank, the gradients the engine leaves for them (after the
    cross-rank reduction) and its grad-norm, without an optimiser step (single-phase toy stage)."""
    from fae import distributed as du
    from fae.training.sampler import derive_seed, seed_all

    data = iter(trainer._loader())
    micro_batches = [next(data) for _ in range(trainer.cfg.grad_accum)]
    seed_all(derive_seed(trainer.cfg.seed, du.rank(), 0))
    stats = trainer._run_phase(trainer.runners[0], micro_batches)
    grads = {k: p.grad.detach().clone() for k, p in trainer.modules["net"].named_parameters()}
    return micro_batches, grads, float(stats["grad_norm"])


def single_thread():
    """One intra-op thread, as in the subprocesses, so float results are bit-comparable."""
    return torch_threads(1)


def assert_bitwise_equal(a, b, path: str = "state") -> None:
    """Recursively compare nested containers of tensors/numbers; tensors must match exactly."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and a.shape == b.shape, path
        assert torch.equal(a, b), f"{path} differs (max |diff| {(a.double() - b.double()).abs().max()})"
    elif isinstance(a, dict):
        assert set(a) == set(b), f"{path}: keys {sorted(set(a) ^ set(b))} differ"
        for k in a:
            assert_bitwise_equal(a[k], b[k], f"{path}.{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            assert_bitwise_equal(x, y, f"{path}[{i}]")
    else:
        assert a == b, f"{path}: {a!r} != {b!r}"
