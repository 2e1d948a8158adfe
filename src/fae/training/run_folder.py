"""The run folder: resolved ``config.yaml`` beside the checkpoints, and the resume/force rules.

- resume (default): a folder holding the same config continues from its newest checkpoint; a
  folder holding a different config is refused (the message names the differing keys) unless
  ``force``, which resumes with the new config and keeps the old one as ``config.previous.yaml``.
- no resume: a folder that already has checkpoints is refused unless ``force``, which deletes
  them (and ``eval.json``; ``metrics.jsonl`` is kept as ``metrics.previous-N.jsonl``) and starts
  from step 0.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any


from fae.config import flatten, to_dict, yaml_dump, yaml_load
from fae.errors import CheckpointError
from fae.io import atomic_write
from fae.training.metrics_log import set_aside_name

# Keys that may change between a run and its resumption without changing its results.
VOLATILE_KEYS = frozenset({
    "train.log_every", "train.ckpt_every", "train.keep_last", "train.milestones",
    "train.eval_every", "train.progress", "train.num_workers", "train.max_nan_skips",
    "token_cache_dir",  # where cached tokens live, not what they are (the cache keys its content)
})


def config_differences(old: dict, new: dict) -> list[str]:
    """Dotted keys whose values differ (volatile keys ignored), sorted."""
    a, b = flatten(old), flatten(new)
    keys = (set(a) | set(b)) - VOLATILE_KEYS
    return sorted(k for k in keys if a.get(k, "<absent>") != b.get(k, "<absent>"))


def saved_form(cfg: Any) -> dict:
    """The config as it reads back from YAML (tuples become lists), for a fair comparison."""
    return yaml_load(yaml_dump(to_dict(cfg)))


# Keys that say where a run writes, not what it computes.
PLACE_KEYS = frozenset({"train.run_dir", "token_cache_dir"})


def computed_settings(cfg: Any) -> dict[str, Any]:
    """What a run computes: its config as dotted keys, without volatile and place keys (two runs
    with equal settings produce equal results wherever they write)."""
    flat = flatten(saved_form(cfg))
    return {k: v for k, v in flat.items() if k not in VOLATILE_KEYS and k not in PLACE_KEYS}


def prepare_run_folder(cfg: Any, run_dir: str | Path, resume: bool, force: bool,
                       has_checkpoints: bool, write: bool = True) -> None:
    """Apply the resume/force rules to ``run_dir`` and write ``config.yaml`` (when ``write``).

    Call on every rank with ``write`` only on rank 0; every rank raises the same error.
    """
    run_dir = Path(run_dir)
    config_path = run_dir / "config.yaml"
    new = saved_form(cfg)
    if not resume and has_checkpoints:
        if not force:
            raise CheckpointError(f"run folder '{run_dir}' already holds checkpoints; resume it "
                                  "(drop --no-resume), pick another train.run_dir, or pass "
                                  "--force to delete them and start again")
        if write:
            shutil.rmtree(run_dir / "checkpoints", ignore_errors=True)
            (run_dir / "eval.json").unlink(missing_ok=True)
            metrics = run_dir / "metrics.jsonl"
            if metrics.exists():  # the old curves are kept, not deleted
                os.replace(metrics, set_aside_name(metrics))
    elif config_path.exists():
        old = yaml_load(config_path.read_text()) or {}
        diff = config_differences(old, new)
        if diff and not force:
            shown = ", ".join(f"{k} ({flatten(old).get(k, '<absent>')!r} -> "
                              f"{flatten(new).get(k, '<absent>')!r})" for k in diff[:6])
            raise CheckpointError(f"run folder '{run_dir}' holds a different config: {shown}"
                                  f"{' ...' if len(diff) > 6 else ''}. Use another train.run_dir, "
                                  "or pass --force to continue it with the new config")
        if diff and write:
            shutil.copyfile(config_path, run_dir / "config.previous.yaml")
    if write:
        text = yaml_dump(new)
        atomic_write(config_path, lambda f: f.write(text), mode="w")
