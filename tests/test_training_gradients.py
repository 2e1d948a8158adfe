"""Gradient scale: the engine's gradient for one step is the mean-loss gradient of the whole global
batch, however the batch is split into micro-batches. Compared on the gradients themselves and on
weights after plain SGD (AdamW, being scale-invariant, would hide a missing ``/ grad_accum``)."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from fae.training.engine import Trainer
from training_helpers import EXACT_STEP, first_step_gradients, toy_stage

pytestmark = pytest.mark.usefixtures("one_thread")

RTOL, ATOL = 1e-5, 1e-7  # float32 sums in another order: ~1e-7 relative


def _trainer(run_dir, grad_accum: int, *extra: str) -> Trainer:
    return Trainer(toy_stage(run_dir, *EXACT_STEP, f"train.grad_accum={grad_accum}", *extra))


def _reference_grads(trainer: Trainer, micro_batches: list) -> dict[str, torch.Tensor]:
    """The mean-squared-error gradient of the whole batch, computed here without the engine."""
    net = trainer.modules["net"]
    net.zero_grad(set_to_none=True)
    x = torch.cat([x for x, _ in micro_batches])  # [16, dim]
    y = torch.cat([y for _, y in micro_batches])  # [16, 1]
    F.mse_loss(net(x), y).backward()
    return {k: p.grad.clone() for k, p in net.named_parameters()}


def _named(key: str):
    """assert_close's message with the tensor's name in front (its differences stay visible)."""
    return lambda message: f"{key}: {message}"


def _norm(grads: dict[str, torch.Tensor]) -> float:
    return float(torch.linalg.vector_norm(torch.stack([g.norm() for g in grads.values()])))


@pytest.mark.parametrize("grad_accum", [1, 2, 4])
def test_the_step_gradient_is_the_whole_batch_mean_gradient(tmp_path, grad_accum):
    trainer = _trainer(tmp_path / "run", grad_accum)
    micro_batches, grads, grad_norm = first_step_gradients(trainer)
    assert [len(x) for x, _ in micro_batches] == [16 // grad_accum] * grad_accum
    reference = _reference_grads(trainer, micro_batches)
    for key, value in reference.items():
        torch.testing.assert_close(grads[key], value, rtol=RTOL, atol=ATOL, msg=_named(key))
    assert grad_norm == pytest.approx(_norm(reference), rel=RTOL)
    trainer.close()


def _sgd(trainer: Trainer, lr: float) -> None:
    """Plain SGD in place of the phase's AdamW: a step moves the weights by lr x gradient."""
    runner = trainer.runners[0]
    runner.optimizer = torch.optim.SGD(runner.params, lr=lr)
    runner.schedule.optimizer = runner.optimizer


def _sgd_weights(run_dir, grad_accum: int) -> dict[str, torch.Tensor]:
    trainer = _trainer(run_dir, grad_accum, "train.steps=5", "train.optim.lr=0.05")
    _sgd(trainer, 0.05)
    trainer.run()
    trainer.close()
    return {k: v.clone() for k, v in trainer.modules["net"].state_dict().items()}


def test_sgd_weights_do_not_depend_on_the_micro_batch_split(tmp_path):
    whole, split = _sgd_weights(tmp_path / "a1", 1), _sgd_weights(tmp_path / "a4", 4)
    start = _trainer(tmp_path / "start", 1).modules["net"].state_dict()
    for key, value in whole.items():
        assert not torch.equal(value, start[key]), f"{key} did not move"
        torch.testing.assert_close(split[key], value, rtol=RTOL, atol=1e-6, msg=_named(key))
