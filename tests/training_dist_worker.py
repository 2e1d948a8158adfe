"""Run under torchrun by tests/test_training_distributed.py: trains toy stages on every rank and
saves each rank's final parameters (and the run results) to ``OUT/<name>-rank<r>.pt``."""
from __future__ import annotations

import sys
from pathlib import Path

import torch

from fae.config import load_config
from fae.training import distributed as du
from fae.training.engine import Trainer
from fae.training.stages.toy import ToyConfig, ToyStage

COMMON = ["train.steps=8", "train.batch_size=16", "train.log_every=1", "train.ckpt_every=4",
          "train.progress=false", "train.ema_decay=0.9", "augment=true"]
RUNS = {
    "ddp": [],
    "ddp-gan": ["two_phase=true", "generator_start_step=2"],
    "fsdp": ["train.distributed=fsdp", "train.grad_accum=2"],
}


def main(out: Path) -> None:
    du.init_distributed()
    for name, extra in RUNS.items():
        cfg = load_config(ToyConfig, None, COMMON + extra + [f"train.run_dir={out / name}"])
        trainer = Trainer(ToyStage(cfg), resume=False)
        try:
            result = trainer.run()
            params = {f"{n}.{k}": v.detach().cpu().clone()
                      for n, m in trainer.modules.items() for k, v in _full_state(m).items()}
            identical = du.check_replicas_equal(list(params.values()))
        finally:
            trainer.close()
        torch.save({"params": params, "result": result, "identical": identical},
                   out / f"{name}-rank{du.rank()}.pt")
    du.destroy_distributed()


def _full_state(module):
    from fae.training.checkpoint import model_state

    return model_state(module) if du.rank() == 0 else _gathered(module)


def _gathered(module):
    """Every rank's own view of the full weights (FSDP gathers; DDP holds a replica)."""
    return {k: (v.full_tensor() if hasattr(v, "full_tensor") else v)
            for k, v in module.state_dict().items()}


if __name__ == "__main__":
    main(Path(sys.argv[1]))
