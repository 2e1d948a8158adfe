"""``metrics.jsonl`` (one JSON object per line) plus TensorBoard events when it is installed.

TensorBoard is an optional extra (``[tensorboard]``). When ``train.tensorboard`` asks for
events and the package is missing, the run says so in one line instead of dropping them silently.

Only rank 0 writes. On resume, lines logged after the checkpoint being resumed are dropped, so
the file never holds two different values for the same step; the old file is first copied to
``metrics.previous-N.jsonl``, so no line is ever lost.
"""
from __future__ import annotations

import json
import math
import shutil
import sys
from pathlib import Path

from fae.errors import install_hint
from fae.io import atomic_write


class MetricsLog:
    """Append-only metrics log of a run folder.

    Args:
        run_dir: the run folder (``metrics.jsonl`` and ``tensorboard/`` go there).
        enabled: False on ranks other than 0 (every call is then a no-op).
        resume_step: the step the run resumes from; later lines are removed (the old file
            is kept as ``metrics.previous-N.jsonl``). None: keep all.
        tensorboard: also write TensorBoard events under ``tensorboard/``; without the
            ``tensorboard`` package, one line on stderr says they are off and why.
    """

    def __init__(self, run_dir: str | Path, enabled: bool = True, resume_step: int | None = None,
                 tensorboard: bool = True):
        self.path = Path(run_dir) / "metrics.jsonl"
        self.enabled = enabled
        self.writer = None
        if not enabled:
            return
        if resume_step is not None and self.path.exists():
            self._truncate_after(resume_step)
        if tensorboard:
            self.writer = _tensorboard_writer(Path(run_dir) / "tensorboard", self.path)

    def _truncate_after(self, step: int) -> None:
        """Drop lines after ``step``; the old file is first kept as ``metrics.previous-N.jsonl``."""
        lines = [line for line in self.path.read_text().splitlines() if line.strip()]
        kept = [line for line in lines if _step_of(line) <= step]
        if len(kept) == len(lines):
            return
        shutil.copyfile(self.path, set_aside_name(self.path))
        atomic_write(self.path, lambda f: f.write("".join(k + "\n" for k in kept)), mode="w")

    def log(self, step: int, values: dict[str, float], kind: str = "train") -> None:
        if not self.enabled:
            return
        record = {"step": step, "kind": kind, **{k: _jsonable(v) for k, v in values.items()}}
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
        if self.writer is not None:
            for key, value in values.items():
                if isinstance(value, (int, float)):
                    self.writer.add_scalar(f"{kind}/{key}", value, step)
            self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


def set_aside_name(path: Path) -> Path:
    """``metrics.jsonl`` -> the first free ``metrics.previous-N.jsonl`` beside it."""
    n = 1
    while (aside := path.with_name(f"{path.stem}.previous-{n}{path.suffix}")).exists():
        n += 1
    return aside


def read_metrics(run_dir: str | Path, kind: str | None = None) -> list[dict]:
    """The records of ``run_dir/metrics.jsonl`` (optionally only one ``kind``)."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.exists():
        return []
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [r for r in records if kind is None or r.get("kind") == kind]


def _step_of(line: str) -> int:
    try:
        return int(json.loads(line).get("step", 0))
    except (ValueError, AttributeError):
        return 0


def _jsonable(value):
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)  # JSON has no NaN/inf literals
    return value


def tensorboard_missing_line(metrics_path: Path) -> str:
    """The one line a run prints when TensorBoard events are asked for but cannot be written."""
    return (f"fae: TensorBoard events off: the tensorboard package is not installed "
            f"({install_hint('tensorboard')}, or train.tensorboard=false to silence this); "
            f"metrics go to {metrics_path}")


def _tensorboard_writer(folder: Path, metrics_path: Path):
    """A ``SummaryWriter`` writing into ``folder``; None (and one line on stderr) without tensorboard."""
    try:
        # Imported here: torch.utils.tensorboard imports the optional tensorboard package.
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        print(tensorboard_missing_line(metrics_path), file=sys.stderr, flush=True)
        return None
    return SummaryWriter(log_dir=str(folder))
