"""A tqdm progress bar on rank 0 showing the loss and images/s (silent elsewhere)."""
from __future__ import annotations

from tqdm import tqdm


class Progress:
    """Progress over optimiser steps.

    Args:
        total: the last step.
        initial: the step training starts (or resumes) from.
        enabled: draw the bar (rank 0 and ``train.progress``).
    """

    def __init__(self, total: int, initial: int, enabled: bool):
        self.bar = None
        self.shown = initial
        if enabled:
            self.bar = tqdm(total=total, initial=initial, unit="step", dynamic_ncols=True)

    def update(self, step: int) -> None:
        if self.bar is not None:
            self.bar.update(step - self.shown)
        self.shown = step

    def postfix(self, record: dict[str, float]) -> None:
        if self.bar is None:
            return
        losses = {k.split("/")[0]: v for k, v in record.items() if k.endswith("/loss")}
        shown = {f"{k} loss" if len(losses) > 1 else "loss": f"{v:.4g}" for k, v in losses.items()}
        shown["img/s"] = f"{record.get('images_per_s', 0.0):.1f}"
        self.bar.set_postfix(shown, refresh=False)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
