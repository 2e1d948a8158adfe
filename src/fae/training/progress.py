"""Progress over optimiser steps on rank 0, with the loss and images/s (silent elsewhere).

A tqdm bar on a terminal, one plain line every 10% in a log (see :mod:`fae.progress`).
"""
from __future__ import annotations

from fae.progress import show_progress


class Progress:
    """Progress over optimiser steps.

    Args:
        total: the last step.
        initial: the step training starts (or resumes) from.
        enabled: show it (rank 0 and ``train.progress``).
        desc: label, e.g. ``train autoencoder``.
    """

    def __init__(self, total: int, initial: int, enabled: bool, desc: str = "train"):
        self.shown = initial
        self.bar = show_progress(total=total, initial=initial, desc=desc, unit="step", disable=not enabled)

    def update(self, step: int) -> None:
        self.bar.update(step - self.shown)
        self.shown = step

    def postfix(self, record: dict[str, float]) -> None:
        """Show the latest losses (one per module when several train) and images/s."""
        losses = {k.split("/")[0]: v for k, v in record.items() if k.endswith("/loss")}
        shown = {f"{k} loss" if len(losses) > 1 else "loss": f"{v:.4g}" for k, v in losses.items()}
        shown["img/s"] = f"{record.get('images_per_s', 0.0):.1f}"
        self.bar.set_postfix(shown, refresh=False)

    def close(self) -> None:
        self.bar.close()
