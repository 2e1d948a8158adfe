"""Running a training stage the way the demo and the experiments do: named by a spec (stage,
config file, overrides), skipped when its outputs are fresh, resumed when interrupted, restarted
when its config or its inputs changed.

Freshness is the one rule of :mod:`fae.freshness`: the run folder records the content key of its
config (what the stage computes: place and volatile keys left out) and of the exports or caches
it reads; a run whose record differs from today's key starts again, and says why.
"""
from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from fae import freshness
from fae.config import yaml_load
from fae.errors import ConfigError, FAEError
from fae.training.engine import train
from fae.training.run_folder import computed_settings, config_differences, saved_form
from fae.training.stages.registry import load_stage, stage_config


@dataclass
class StageSpec:
    """One training stage as the demo runs it: its section of the demo config, its stage name,
    config file and every override."""

    section: str
    kind: str
    config: str | None
    overrides: list[str]

    def validate(self):
        """The stage's config, checked against its schema (no files of earlier stages needed);
        returns it (resolved once per spec)."""
        return self._resolved

    @functools.cached_property
    def _resolved(self):
        try:
            return stage_config(self.kind, self.config, self.overrides)
        except ConfigError as e:
            raise ConfigError(f"demo stage '{self.section}' (file {self.config or 'none'}, "
                              f"with {self.section}.overrides): {e}") from None

    def with_overrides(self, extra: list[str]) -> StageSpec:
        """The same stage with ``extra`` overrides after its own."""
        return StageSpec(self.section, self.kind, self.config, self.overrides + list(extra))


def resolve_path(path: str, base: Path) -> Path:
    """``path`` as given when it is absolute or exists, else relative to ``base``."""
    p = Path(path)
    return p if p.is_absolute() or p.exists() else base / p


def stage_spec(section: str, kind: str, run, base: Path, overrides: list[str]) -> StageSpec:
    """A spec from a demo config's ``StageRun`` (its file read relative to ``base``)."""
    config = str(resolve_path(run.config, base)) if run.config else None
    return StageSpec(section, kind, config, run.override_list() + overrides)


def stage_key(cfg: Any, upstream: list[Path]) -> str:
    """The content key of a stage run: what it computes and the identities of what it reads."""
    return freshness.content_key(computed_settings(cfg), upstream)


def stage_status(stage, key: str) -> tuple[str, str]:
    """("done" (skip) | "resume" | "restart" (stale) | "new", why), for the run's content ``key``."""
    cfg = stage.config
    run_dir = Path(cfg.train.run_dir)
    if not (run_dir / "config.yaml").is_file():
        return "new", ""
    old = yaml_load((run_dir / "config.yaml").read_text()) or {}
    changed = config_differences(old, saved_form(cfg))
    if changed:
        return "restart", "config changed: " + ", ".join(changed[:4]) + (" ..." if len(changed) > 4 else "")
    checkpoints = sorted((run_dir / "checkpoints").glob("step-*.pt"))
    stale = freshness.stale_reason(run_dir, key)
    if stale and checkpoints:
        return "restart", stale
    eval_file, export = run_dir / "eval.json", run_dir / "export" / "config.json"
    if not stale and eval_file.is_file() and export.is_file():
        if json.loads(eval_file.read_text()).get("step") == cfg.train.steps:
            return "done", ""
    return ("resume", "") if checkpoints else ("new", "")


def train_stage(spec: StageSpec, upstream: list[Path], loader: Callable[[Path], Any]) -> str:
    """Build the stage from its config + overrides and train it through the one training loop
    (``upstream``: the exports and caches it reads, by path)."""
    stage = load_stage(spec.kind, spec.config, spec.overrides)
    key = stage_key(stage.config, upstream)
    status, why = stage_status(stage, key)
    run_dir = Path(stage.config.train.run_dir)
    export = run_dir / "export"
    if status == "done":
        try:
            loader(export)  # a readable, hash-checked export
            return "skipped (outputs valid)"
        except FAEError as e:
            print(f"[demo] {export} is unusable ({e}); re-exporting", flush=True)
            status = "resume"
    if status == "restart":
        print(f"[demo] starting {run_dir} again ({why})", flush=True)
    freshness.record(run_dir, key)
    train(stage, resume=status != "restart", force=status == "restart")
    return {"new": "ran", "resume": "resumed", "restart": f"restarted ({why})"}[status]
