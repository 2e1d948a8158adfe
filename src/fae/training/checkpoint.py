"""Training checkpoints: full state in one file per step, written atomically by rank 0.

``run_dir/checkpoints/step-00001000.pt`` holds the models, EMA, optimisers, LR schedules, step,
data position, NaN-skip count and the RNG states of every rank. Files are written through
:func:`fae.io.atomic_torch_save` (temp file, fsync, rename): a crash during a save leaves the
previous checkpoint intact, and loading ignores stray temp files. All tensors and containers are
plain, so files load with ``torch.load(weights_only=True)``.
"""
from __future__ import annotations

import os
import random
import re
import zipfile
from pathlib import Path

import numpy as np
import torch
from torch import nn

from fae.errors import CheckpointError
from fae.io import atomic_torch_save
from fae.training.wrappers import is_fsdp, unwrap

_NAME = re.compile(r"^step-(\d{8,})\.pt$")


def checkpoint_name(step: int) -> str:
    return f"step-{step:08d}.pt"


class CheckpointManager:
    """Lists, saves, loads and prunes the checkpoints of one run folder.

    Args:
        folder: the checkpoint folder (``run_dir/checkpoints``).
        keep_last: how many most recent checkpoints to keep (older ones are deleted after a save).
        milestones: steps whose checkpoints are never deleted.
    """

    def __init__(self, folder: str | Path, keep_last: int = 2, milestones: list[int] = ()):
        self.folder = Path(folder)
        self.keep_last = max(1, keep_last)
        self.milestones = set(milestones)

    def steps(self) -> list[int]:
        """Steps of the complete checkpoints on disk, oldest first (temp files are ignored)."""
        if not self.folder.is_dir():
            return []
        found = (_NAME.match(p.name) for p in self.folder.iterdir())
        return sorted(int(m.group(1)) for m in found if m)

    def path(self, step: int) -> Path:
        return self.folder / checkpoint_name(step)

    def save(self, state: dict, step: int) -> Path:
        """Write ``state`` atomically (call on rank 0 only), then prune old checkpoints."""
        path = atomic_torch_save(state, self.path(step))
        self.prune()
        return path

    def prune(self) -> None:
        steps = self.steps()
        for step in steps[:-self.keep_last]:
            if step not in self.milestones:
                self.path(step).unlink(missing_ok=True)

    def load_latest(self) -> tuple[dict, Path] | None:
        """The newest checkpoint that loads, or None; unreadable files are reported, skipped and
        listed in ``self.unreadable`` as ``(path, reason)``."""
        self.unreadable: list[tuple[Path, str]] = []
        for step in reversed(self.steps()):
            path = self.path(step)
            try:
                return torch.load(path, map_location="cpu", weights_only=True), path
            except Exception as e:  # a truncated or foreign file: fall back to the previous one
                reason = _unreadable_reason(path, e)
                self.unreadable.append((path, reason))
                print(f"warning: skipping unreadable checkpoint {path}: {reason}", flush=True)
        return None

    def move_aside(self, paths: list[Path]) -> Path:
        """Move (unreadable) checkpoint files into ``unreadable/`` of the folder, keeping them."""
        target = self.folder / "unreadable"
        target.mkdir(exist_ok=True)
        for path in paths:
            name, n = Path(path).name, 1
            while (target / name).exists():  # set aside before: keep both
                name, n = f"{Path(path).name}.{n}", n + 1
            os.replace(path, target / name)
        return target


def _unreadable_reason(path: Path, error: Exception) -> str:
    """Why a checkpoint did not load, in one line (torch's own message misleads for a cut file)."""
    if not zipfile.is_zipfile(path):
        return "not a complete torch.save archive (truncated or foreign file)"
    return " ".join(str(error).split())[:200]


def load_file(path: str | Path) -> dict:
    path = Path(path)
    try:
        # memory-mapped: tensors are paged in as load_state_dict copies them, so a resume does not
        # hold the whole file in memory beside the live training state (2x at SiT-XL / STARFlow size)
        return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint '{path}' does not exist") from None
    except Exception as e:
        raise CheckpointError(f"checkpoint '{path}' cannot be read: {e}") from None


def ema_weights(state: dict, name: str, path: str | Path) -> dict[str, torch.Tensor]:
    """The EMA copy of module ``name``'s tracked parameters in the training checkpoint ``state``
    (read from ``path``): an error naming the file when it holds none, e.g. a run trained with
    ``train.ema_decay: null`` where EMA weights are expected."""
    ema = state.get("ema") if isinstance(state, dict) else None
    if not isinstance(ema, dict) or name not in ema or "shadow" not in ema[name]:
        kept = ", ".join(ema) if isinstance(ema, dict) and ema else "none"
        raise CheckpointError(f"checkpoint '{path}' holds no EMA weights of '{name}' (EMA kept for: {kept}); "
                              "EMA weights are expected here: train with train.ema_decay set")
    return ema[name]["shadow"]


def load_ema_weights(module: nn.Module, path: str | Path, name: str) -> nn.Module:
    """Load module ``name`` of the training checkpoint at ``path`` into ``module``, with its EMA
    weights: the model state first (buffers and untracked parameters), then the EMA copy over the
    parameters it tracks. A checkpoint without that module or without its EMA is an error."""
    state = load_file(path)
    models = state.get("models") if isinstance(state, dict) else None
    if not isinstance(models, dict) or name not in models:
        raise CheckpointError(f"checkpoint '{path}' holds no model '{name}'")
    shadow = ema_weights(state, name, path)
    load_model_state(module, models[name])
    with torch.no_grad():
        params = dict(unwrap(module).named_parameters())
        for key, value in shadow.items():
            params[key].copy_(value)
    return module


# ---------------------------------------------------------------- model / optimiser state
def _options(full: bool = True):
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(full_state_dict=full, cpu_offload=True)


def model_state(module: nn.Module) -> dict[str, torch.Tensor]:
    """Full CPU state dict of a (possibly wrapped or sharded) module. Collective under FSDP."""
    module = unwrap(module)
    if is_fsdp(module):
        from torch.distributed.checkpoint.state_dict import get_model_state_dict

        return get_model_state_dict(module, options=_options())
    return {k: v.detach().cpu().clone() for k, v in module.state_dict().items()}


def load_model_state(module: nn.Module, state: dict[str, torch.Tensor]) -> None:
    module = unwrap(module)
    if is_fsdp(module):
        from torch.distributed.checkpoint.state_dict import set_model_state_dict

        set_model_state_dict(module, state, options=_options())
    else:
        module.load_state_dict(state)


def optimizer_state(modules: dict[str, nn.Module], optimizer: torch.optim.Optimizer) -> dict:
    """Full optimiser state (parameter names as keys under FSDP). Collective under FSDP."""
    container = nn.ModuleDict({k: unwrap(m) for k, m in modules.items()})
    if any(is_fsdp(m) for m in container.values()):
        from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

        return get_optimizer_state_dict(container, optimizer, options=_options())
    return optimizer.state_dict()


def load_optimizer_state(modules: dict[str, nn.Module], optimizer: torch.optim.Optimizer,
                         state: dict) -> None:
    container = nn.ModuleDict({k: unwrap(m) for k, m in modules.items()})
    if any(is_fsdp(m) for m in container.values()):
        from torch.distributed.checkpoint.state_dict import set_optimizer_state_dict

        set_optimizer_state_dict(container, optimizer, state, options=_options())
    else:
        optimizer.load_state_dict(state)


# ---------------------------------------------------------------- RNG state
def capture_rng() -> dict:
    """This process's torch (CPU + CUDA), numpy and python RNG states, as plain containers."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    state = {"torch": torch.get_rng_state(),
             "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": pos,
                       "has_gauss": has_gauss, "gauss": gauss},
             "python": {"version": version, "internal": list(internal), "gauss_next": gauss_next}}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    npy = state["numpy"]
    np.random.set_state((npy["kind"], npy["keys"].numpy().astype(np.uint32), npy["pos"],
                         npy["has_gauss"], npy["gauss"]))
    py = state["python"]
    random.setstate((py["version"], tuple(py["internal"]), py["gauss_next"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
