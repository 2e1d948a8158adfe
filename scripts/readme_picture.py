#!/usr/bin/env python3
"""The README's picture (docs/report.png) from a finished demo run.

    python scripts/readme_picture.py [RUN_DIR] [OUT_PNG]     # defaults: runs/demo docs/report.png

It redraws the run's summary (what each stage made of test images, the class-conditional samples
and the headline metrics, from RUN_DIR/eval/images.pt and RUN_DIR/eval/metrics.json) with the
demo's own drawing code, so the picture always shows the figures the run measured. Run it after a
default `fae demo`, then update the README's table from the same metrics.json.
"""
from __future__ import annotations

import datetime
import json
import sys
from pathlib import Path

import torch

from fae.data.fashion_mnist import CLASS_NAMES
from fae.demo.report import SUMMARY_PER_CLASS, reconstruction_figure, samples_figure, summary_figure
from fae.images import save_png


def main(run_dir: Path, out: Path) -> Path:
    metrics_file = run_dir / "eval" / "metrics.json"
    metrics = json.loads(metrics_file.read_text())["metrics"]  # {"key": ..., "metrics": {...}}
    day = datetime.date.fromtimestamp(metrics_file.stat().st_mtime).isoformat()
    images = torch.load(run_dir / "eval" / "images.pt", weights_only=True)
    per_class = len(images["guided"]) // len(CLASS_NAMES)
    title = f"FAE demo on Fashion-MNIST, measured {day} (scripts/readme_picture.py)"
    picture = summary_figure(reconstruction_figure(images), samples_figure(images["guided"], min(per_class, SUMMARY_PER_CLASS)),
                             metrics, title)
    return save_png(picture, out)


if __name__ == "__main__":
    args = sys.argv[1:]
    run = Path(args[0]) if args else Path("runs/demo")
    target = Path(args[1]) if len(args) > 1 else Path("docs/report.png")
    print(main(run, target))
