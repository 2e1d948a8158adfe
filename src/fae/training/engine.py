"""The one training loop used by every stage (see ``stage.py`` for what a stage supplies).

Progress is counted in optimiser steps. Step ``s`` reads stream positions ``[s*B, (s+1)*B)`` of
the shuffled data (``sampler.py``) and runs with the global RNGs seeded from
``(seed, rank, s)``, so a run resumed from a checkpoint continues bit-for-bit (EDM2 style).
"""
from __future__ import annotations

import contextlib
import time
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader

from fae.config import to_dict
from fae.errors import CheckpointError, ConfigError, FAEError, TrainingError
from fae.io import atomic_save_json
from fae import distributed as du
from fae.training.checkpoint import (CheckpointManager, capture_rng, load_file, load_model_state,
                                     load_optimizer_state, model_state, optimizer_state, restore_rng)
from fae.training.dry_run import describe_stage
from fae.training.ema import EMA
from fae.training.metrics_log import MetricsLog
from fae.training.phases import (PhaseRunner, build_runner, gradient_sync, grad_norm_and_clip,
                                 resolve_phases, restore_trainable, select_trainable)
from fae.training.preflight import preflight_stage
from fae.training.progress import Progress
from fae.training.run_folder import prepare_run_folder
from fae.training.sampler import SeededDataset, StepBatchSampler, derive_seed, seed_all
from fae.training.stage import Stage
from fae.training.wrappers import is_fsdp, reshard, unwrap, wrap


def train(stage: Stage, resume: bool = True, force: bool = False, restart: bool = False) -> dict:
    """Train ``stage`` to ``train.steps``; evaluate and export with EMA weights. See :class:`Trainer`."""
    trainer = Trainer(stage, resume=resume, force=force, restart=restart)
    try:
        return trainer.run()
    finally:
        trainer.close()


def dry_run(stage: Stage) -> dict:
    """Validate and describe a stage without weights or network (models on ``meta``), then check
    every input it reads and its run folder (``fae.training.preflight``) and print the checklist.
    Returns the description with ``preflight`` (the outcomes) and ``missing`` (the items that
    failed: ``fae train --dry-run`` exits 2 when there is one)."""
    described = describe_stage(stage)
    outcomes = preflight_stage(stage)
    return {**described, "preflight": outcomes, "missing": [o.check.item for o in outcomes if not o.ok]}


def micro_batch_size(batch_size: int, grad_accum: int, world: int) -> int:
    """Per-rank micro-batch; the global batch must split evenly over ranks and micro-batches."""
    if batch_size % (grad_accum * world):
        raise ConfigError(f"config key 'train.batch_size' ({batch_size}) must be divisible by "
                          f"train.grad_accum x world size = {grad_accum} x {world}")
    return batch_size // (grad_accum * world)


def to_device(batch: Any, device: torch.device) -> Any:
    """Move every tensor in a (nested) batch to ``device``."""
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, (list, tuple)):
        return type(batch)(to_device(b, device) for b in batch)
    if isinstance(batch, dict):
        return {k: to_device(v, device) for k, v in batch.items()}
    return batch


class Trainer:
    """Builds a stage's models, optimisers, EMA and data for this process and runs the loop.

    Args:
        stage: the stage (its ``config.train`` holds the loop settings).
        resume: continue from the newest checkpoint in ``train.run_dir`` when there is one.
        force: resume even if the run folder holds a different config; with ``resume=False``,
            delete the folder's checkpoints and start again.
        restart: when no checkpoint of the folder can be read, move them to
            ``checkpoints/unreadable/`` and start from step 0 (without it, that is an error).
    """

    def __init__(self, stage: Stage, resume: bool = True, force: bool = False,
                 restart: bool = False):
        self.stage = stage
        self.cfg = stage.config.train
        self.run_dir = Path(self.cfg.run_dir)
        self.device = du.device()
        self.micro = micro_batch_size(self.cfg.batch_size, self.cfg.grad_accum, du.world_size())
        self.checkpoints = CheckpointManager(self.run_dir / "checkpoints", self.cfg.keep_last,
                                             self.cfg.milestones)
        self._prepare_folder(resume, force, write=False)  # refuse before building anything
        self.step, self.nan_skips, self.last_saved = 0, 0, -1
        self._build()  # data and models that fail leave the run folder as it was
        self._prepare_folder(resume, force, write=True)
        self.resumed_from = self._resume(restart) if resume else None
        # Lines after the resumed step (or all, when starting at 0) belong to a lost future.
        self.metrics = MetricsLog(self.run_dir, enabled=du.is_main(), resume_step=self.step,
                                  tensorboard=self.cfg.tensorboard)

    # ------------------------------------------------------------------ set-up
    def _prepare_folder(self, resume: bool, force: bool, write: bool) -> None:
        """Rank 0 applies the run-folder rules (and writes when ``write``); every rank raises the
        same error."""
        du.on_main(lambda: prepare_run_folder(self.stage.config, self.run_dir, resume, force,
                                              bool(self.checkpoints.steps()), write=write),
                   FAEError, CheckpointError)

    def _precision(self) -> torch.dtype | None:
        precision = self.cfg.precision
        if precision == "auto":
            precision = "bf16" if self.device.type == "cuda" else "fp32"
        return torch.bfloat16 if precision == "bf16" else None

    def _build(self) -> None:
        cfg = self.cfg
        seed_all(derive_seed(cfg.seed, 0x1417))  # identical initial weights on every rank
        models = self.stage.build_models(self.device)
        self.stage.setup(self.device)
        self.names = list(models)
        self.trainable = {n: [k for k, p in m.named_parameters() if p.requires_grad]
                          for n, m in models.items()}
        phases = resolve_phases(self.stage.phases(), self.names)
        self.wrapped = {n: wrap(m.to(self.device), self.device, cfg.distributed, cfg.compile,
                                cfg.find_unused_parameters) for n, m in models.items()}
        self.modules = {n: unwrap(m) for n, m in self.wrapped.items()}
        self.sharded = any(is_fsdp(m) for m in self.modules.values())
        self.runners = [build_runner(p, self.wrapped, self.trainable, self.device, cfg.steps)
                        for p in phases]
        self.emas = {}
        if cfg.ema_decay is not None:
            for n in self.stage.ema_modules():
                self.emas[n] = EMA(self.modules[n], cfg.ema_decay, cfg.ema_warmup, self.trainable[n])
        self.autocast_dtype = self._precision()

    def _loader(self) -> DataLoader:
        dataset = self.stage.train_dataset()
        self.dataset_len = len(dataset)
        sampler = StepBatchSampler(len(dataset), self.cfg.batch_size, self.cfg.grad_accum,
                                   du.rank(), du.world_size(), self.cfg.seed, start_step=self.step)
        return DataLoader(SeededDataset(dataset, self.cfg.seed), batch_sampler=sampler,
                          num_workers=self.cfg.num_workers, pin_memory=self.device.type == "cuda")

    # ------------------------------------------------------------------ checkpoints
    def _state(self) -> dict:
        """Everything a resume needs. Collective (FSDP gathers, RNG of every rank)."""
        return {"step": self.step, "nan_skips": self.nan_skips, "world_size": du.world_size(),
                "batch_size": self.cfg.batch_size,
                "data": {"samples_seen": self.step * self.cfg.batch_size},
                "models": {n: model_state(m) for n, m in self.wrapped.items()},
                "ema": {n: e.state_dict() for n, e in self.emas.items()},
                "optimizers": {r.name: optimizer_state({n: self.wrapped[n] for n in r.phase.modules},
                                                       r.optimizer) for r in self.runners},
                "schedules": {r.name: r.schedule.state_dict() for r in self.runners},
                "rng": du.all_gather_object(capture_rng()),
                "config": to_dict(self.stage.config)}

    def save_checkpoint(self) -> Path | None:
        state = self._state()
        path = self.checkpoints.save(state, self.step) if du.is_main() else None
        du.barrier()
        self.last_saved = self.step
        return path

    def _resume(self, restart: bool) -> int | None:
        path, unreadable = None, []
        if du.is_main():
            found = self.checkpoints.load_latest()
            path = None if found is None else str(found[1])
            unreadable = [(str(p), reason) for p, reason in self.checkpoints.unreadable]
        path, unreadable = du.broadcast_object((path, unreadable))
        if path is None and unreadable:
            self._restart_over(unreadable, restart)
        elif unreadable:  # resuming from an older one: keep the damaged newer files out of the way
            self._set_aside(unreadable, f"resuming from {path}")
        if path is None:
            return None
        state = load_file(path)
        missing = [k for k in _CHECKPOINT_KEYS if not isinstance(state, dict) or k not in state]
        if missing:
            raise CheckpointError(f"'{path}' is not a training checkpoint of fae (no "
                                  f"{', '.join(missing)}); move it out of the checkpoint folder")
        if state["batch_size"] != self.cfg.batch_size:
            raise CheckpointError(f"checkpoint '{path}' used train.batch_size={state['batch_size']}, "
                                  f"the config says {self.cfg.batch_size}")
        try:
            self._load_state(state)
        except (KeyError, RuntimeError, ValueError) as e:  # another architecture or phase layout
            raise CheckpointError(f"checkpoint '{path}' does not fit the models of this config "
                                  f"(was the architecture changed under --force?): "
                                  f"{_first_line(e)}") from None
        if state["world_size"] == du.world_size():
            restore_rng(state["rng"][du.rank()])  # per-step seeding makes this a formality
        self.step = self.last_saved = int(state["step"])
        self.nan_skips = int(state["nan_skips"])
        self._say(f"resumed from {path} (step {self.step})")
        return self.step

    def _restart_over(self, unreadable: list[tuple[str, str]], restart: bool) -> None:
        """Every checkpoint is unreadable: an error unless ``restart``, which keeps them aside."""
        names = ", ".join(p for p, _ in unreadable)
        if not restart:
            raise CheckpointError(f"no checkpoint of run folder '{self.run_dir}' can be read "
                                  f"({names}; newest: {unreadable[0][1]}). Pass --restart to move "
                                  "them to checkpoints/unreadable/ and start again from step 0")
        self._set_aside(unreadable, "restarting from step 0")

    def _set_aside(self, unreadable: list[tuple[str, str]], doing: str) -> None:
        if du.is_main():
            target = self.checkpoints.move_aside([Path(p) for p, _ in unreadable])
            self._say(f"{doing}; unreadable checkpoints moved to {target}")
        du.barrier()

    def _load_state(self, state: dict) -> None:
        for n, m in self.wrapped.items():
            load_model_state(m, state["models"][n])
        for n, e in self.emas.items():
            e.load_state_dict(state["ema"][n])
        for r in self.runners:
            load_optimizer_state({n: self.wrapped[n] for n in r.phase.modules}, r.optimizer,
                                 state["optimizers"][r.name])
            r.schedule.load_state_dict(state["schedules"][r.name])

    # ------------------------------------------------------------------ one step
    def _autocast(self):
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast_dtype)

    def _run_phase(self, runner: PhaseRunner, micro_batches: list) -> dict[str, torch.Tensor]:
        """Forward/backward over the micro-batches; returns loss, grad-norm and logs (local)."""
        select_trainable(runner, self.runners)
        view = {n: self.wrapped[n] if n in runner.phase.modules else self.modules[n]
                for n in self.names}
        trained = [self.wrapped[n] for n in runner.phase.modules]
        runner.optimizer.zero_grad(set_to_none=True)
        sums: dict[str, torch.Tensor] = {}
        for i, batch in enumerate(micro_batches):
            last = i == len(micro_batches) - 1
            with gradient_sync(trained, enabled=last):
                with self._autocast():
                    loss, logs = self.stage.loss(runner.name, batch, view,
                                                 self.step)
                (loss.float() / len(micro_batches)).backward()
            for key, value in {"loss": loss, **logs}.items():
                value = torch.as_tensor(value).detach().float().to(self.device)
                sums[key] = sums.get(key, 0.0) + value / len(micro_batches)
        sums["grad_norm"] = grad_norm_and_clip(runner.params, runner.phase.optim.grad_clip
                                               ).float().to(self.device)
        return sums

    def _train_step(self, micro_batches: list) -> tuple[dict[str, float], bool]:
        """Run every active phase; returns rank-averaged values and whether the step was skipped."""
        # on the device once per step: every phase sees the same tensors (no copy per phase, and
        # a stage can tell it is the same batch without comparing values on the device)
        micro_batches = [to_device(batch, self.device) for batch in micro_batches]
        values: dict[str, float] = {}
        for runner in self.runners:
            if not runner.active(self.step):
                continue
            values[f"lr/{runner.name}"] = runner.schedule.apply(self.step - runner.phase.start_step)
            local = self._run_phase(runner, micro_batches)
            if self.sharded:
                for module in self.modules.values():
                    reshard(module)  # FSDP: modules used frozen in this phase keep full weights
            keys = sorted(local)
            reduced = du.all_reduce_mean(torch.stack([local[k] for k in keys])).tolist()
            stats = dict(zip(keys, reduced))
            if not all(map(_finite, (stats["loss"], stats["grad_norm"]))):
                runner.optimizer.zero_grad(set_to_none=True)
                self._non_finite(runner.name, stats)
                return values, True
            runner.optimizer.step()
            runner.optimizer.zero_grad(set_to_none=True)
            values.update({f"{runner.name}/{k}": v for k, v in stats.items()})
        for ema in self.emas.values():
            ema.update()
        return values, False

    def _non_finite(self, phase: str, stats: dict[str, float]) -> None:
        what = f"loss={stats['loss']}, grad-norm={stats['grad_norm']}"
        if self.cfg.nan_policy == "stop":
            raise TrainingError(f"non-finite loss at step {self.step} (phase '{phase}': {what}); "
                                "set train.nan_policy=skip to skip such steps")
        self.nan_skips += 1
        self._say(f"step {self.step}: non-finite loss in phase '{phase}' ({what}); step skipped "
                  f"({self.nan_skips} so far)")
        if self.nan_skips > self.cfg.max_nan_skips:
            raise TrainingError(f"{self.nan_skips} steps skipped for non-finite losses (last at step "
                                f"{self.step}), more than train.max_nan_skips="
                                f"{self.cfg.max_nan_skips}")

    # ------------------------------------------------------------------ the loop
    def run(self) -> dict:
        cfg = self.cfg
        self._say(f"run folder: {self.run_dir.resolve()}")
        data = iter(self._loader())
        progress = Progress(cfg.steps, self.step, enabled=du.is_main() and cfg.progress,
                            desc=f"train {self.stage.name}")
        interval: dict[str, list[float]] = {}
        tick, tick_step = time.perf_counter(), self.step
        for module in self.modules.values():
            module.train()
        while self.step < cfg.steps:
            micro_batches = [next(data) for _ in range(cfg.grad_accum)]
            seed_all(derive_seed(cfg.seed, du.rank(), self.step))
            values, skipped = self._train_step(micro_batches)
            for k, v in values.items():
                interval.setdefault(k, []).append(v)
            self.step += 1
            if self.step % cfg.log_every == 0 or self.step == cfg.steps:
                elapsed = time.perf_counter() - tick
                rate = cfg.batch_size * (self.step - tick_step) / max(elapsed, 1e-9)
                record = {k: sum(v) / len(v) for k, v in interval.items()}
                record.update(images_per_s=rate, nan_skips=self.nan_skips)
                self.metrics.log(self.step, record)
                progress.postfix(record)
                interval, tick, tick_step = {}, time.perf_counter(), self.step
            progress.update(self.step)
            if cfg.ckpt_every and self.step % cfg.ckpt_every == 0:
                self.save_checkpoint()
            if cfg.eval_every and self.step % cfg.eval_every == 0 and self.step < cfg.steps:
                self.evaluate()
        progress.close()
        restore_trainable(self.runners)
        if self.last_saved != self.step:
            self.save_checkpoint()
        results = self.evaluate()
        if du.is_main():
            atomic_save_json({"step": self.step, **results}, self.run_dir / "eval.json")
        export = self.export()
        self._say(f"finished at step {self.step}; checkpoint {self.checkpoints.path(self.step)}")
        if export is not None:
            self._say(f"exported to {export}")
        return {"run_dir": str(self.run_dir), "step": self.step, "resumed_from": self.resumed_from,
                "nan_skips": self.nan_skips, "eval": results,
                "checkpoint": str(self.checkpoints.path(self.step)),
                "export": str(export) if export is not None else None}

    @contextlib.contextmanager
    def ema_weights(self):
        """EMA weights swapped into the modules (eval mode) for the duration of the block."""
        with contextlib.ExitStack() as stack:
            for ema in self.emas.values():
                stack.enter_context(ema.swapped_in())
            modes = {n: m.training for n, m in self.modules.items()}
            for m in self.modules.values():
                m.eval()
            try:
                yield dict(self.modules)
            finally:
                for n, m in self.modules.items():
                    m.train(modes[n])

    def evaluate(self) -> dict[str, float]:
        """``stage.evaluate`` on every rank with EMA weights; rank 0 logs it as kind "eval"."""
        with self.ema_weights() as models, torch.no_grad():
            results = self.stage.evaluate(models, self.step, self.run_dir) or {}
        results = {k: float(v) if isinstance(v, (int, float, torch.Tensor)) else v
                   for k, v in results.items()}
        if results:
            self.metrics.log(self.step, results, kind="eval")
        return results

    def export(self) -> Path | None:
        """``stage.export`` on rank 0 with EMA weights (FSDP: from gathered full weights)."""
        path = None
        with self.ema_weights() as models:
            if self.sharded:
                states = {n: model_state(m) for n, m in models.items()}  # collective
                if du.is_main():
                    models = self.stage.build_models("cpu")
                    for n, m in models.items():
                        m.load_state_dict(states[n])
            if du.is_main():
                path = self.stage.export(models, self.run_dir)
        du.barrier()
        return path

    def _say(self, message: str) -> None:
        if du.is_main():
            print(message, flush=True)

    def close(self) -> None:
        self.metrics.close()


# What ``Trainer._state`` writes and ``_resume`` reads.
_CHECKPOINT_KEYS = ("step", "nan_skips", "world_size", "batch_size", "models", "ema", "optimizers",
                    "schedules", "rng")


def _first_line(error: Exception) -> str:
    """``load_state_dict`` errors span many lines (one per tensor); the first few say enough."""
    text = " ".join(str(error).split())
    return text if len(text) <= 300 else text[:300] + " ..."


def _finite(x: float) -> bool:
    return x == x and abs(x) != float("inf")
