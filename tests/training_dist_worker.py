"""Run under torchrun by tests/test_training_distributed.py: trains toy stages on every rank and
saves each rank's final parameters (and the run results), or one step's gradients, to
``OUT/<name>-rank<r>.pt``."""
from __future__ import annotations

import sys
from pathlib import Path

import torch

from fae.config import load_config
from fae import distributed as du
from fae.training.engine import Trainer
from toy_stage import ToyConfig, ToyStage, register
from training_helpers import EXACT_STEP, first_step_gradients

COMMON = ["train.steps=8", "train.batch_size=16", "train.log_every=1", "train.ckpt_every=4",
          "train.progress=false", "train.ema_decay=0.9", "augment=true", "train.tensorboard=false"]
RUNS = {
    "ddp": [],
    "ddp-gan": ["two_phase=true", "generator_start_step=2"],
    "fsdp": ["train.distributed=fsdp", "train.grad_accum=2"],
    "fsdp-gan": ["train.distributed=fsdp", "two_phase=true", "generator_start_step=2"],
}
# One step's gradients (no optimiser step) of the whole batch split over 2 ranks (x 2 micro-batches).
GRADIENTS = {"ddp-grads": ["train.grad_accum=1"], "ddp-grads-accum": ["train.grad_accum=2"]}
# Trained to step 4 first, then resumed (through the FSDP/DDP load path) to step 8.
RESUMED = {"ddp-resumed": RUNS["ddp"], "fsdp-resumed": RUNS["fsdp"]}


def _trainer(out: Path, name: str, extra: list[str], steps: int) -> Trainer:
    overrides = COMMON + extra + [f"train.run_dir={out / name}", f"train.steps={steps}"]
    return Trainer(ToyStage(load_config(ToyConfig, None, overrides)), force=True)


def _run(trainer: Trainer) -> dict:
    try:
        return trainer.run()
    finally:
        trainer.close()


def _save(out: Path, name: str, trainer: Trainer, result: dict) -> None:
    params = {f"{n}.{k}": v.detach().cpu().clone()
              for n, m in trainer.modules.items() for k, v in _full_state(m).items()}
    identical = du.check_replicas_equal(list(params.values()))
    torch.save({"params": params, "result": result, "identical": identical},
               out / f"{name}-rank{du.rank()}.pt")


def main(out: Path) -> None:
    register()
    from fae.cli import main as fae_main

    with du.process_group():  # the entry point owns the group; the library never starts it
        _train_all(out)
        # Last, the command line itself: it finds the group running, uses it and leaves it to us
        # (a second rendezvous after destroying the group can hang the c10d store).
        code = fae_main(["train", "toy", *COMMON, *RUNS["ddp"], f"train.run_dir={out / 'cli'}"])
        assert du.is_initialized(), "fae.cli.main tore down a process group it did not start"
    if code != 0:
        raise SystemExit(code)


def _save_gradients(out: Path) -> None:
    for name, extra in GRADIENTS.items():
        overrides = [*EXACT_STEP, *extra, "train.progress=false", f"train.run_dir={out / name}"]
        trainer = Trainer(ToyStage(load_config(ToyConfig, None, overrides)))
        _, grads, grad_norm = first_step_gradients(trainer)
        trainer.close()
        torch.save({"grads": grads, "grad_norm": grad_norm}, out / f"{name}-rank{du.rank()}.pt")


def _train_all(out: Path) -> None:
    _save_gradients(out)
    for name, extra in RUNS.items():
        trainer = _trainer(out, name, extra, 8)
        _save(out, name, trainer, _run(trainer))
    for name, extra in RESUMED.items():
        _run(_trainer(out, name, extra, 4))
        trainer = _trainer(out, name, extra, 8)  # steps differ: --force resumes anyway
        _save(out, name, trainer, _run(trainer))


def _full_state(module) -> dict:
    """Every rank's view of the full weights (FSDP gathers the shards; DDP holds a replica)."""
    return {k: (v.full_tensor() if hasattr(v, "full_tensor") else v)
            for k, v in module.state_dict().items()}


if __name__ == "__main__":
    main(Path(sys.argv[1]))
