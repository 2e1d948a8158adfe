"""The text-to-image section of the demo report (``fae demo --t2i``): prompts -> images grid, the
MMDiT's loss curve, and a table beside the class-conditional generator at equal steps."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from fae.demo.captions import ATTRIBUTES, CLASS_WORDS, HELD_OUT_TEMPLATES, caption
from fae.images import image_grid, save_png

GRID_SCALE = 3


def prompt_grid(images: torch.Tensor, per_row: int):
    """One row per (class, attribute) in the first held-out phrasing: its samples, which are the
    held-out samples i = 60 m + 10 a + c (``fae.demo.captions.prompt_set``)."""
    n_classes, period = len(CLASS_WORDS), 2 * len(CLASS_WORDS) * len(HELD_OUT_TEMPLATES)
    last_row = range(2 * n_classes - 1, len(images), period)  # the row with the fewest samples
    per_row = max(1, min(per_row, len(last_row)))  # rows short of samples are padded white
    rows, labels = [], []
    for c in range(n_classes):
        for a in range(len(ATTRIBUTES)):
            first = n_classes * a + c
            picked = [images[i] if i < len(images) else torch.full_like(images[0], 255)
                      for i in range(first, first + period * per_row, period)]
            rows += picked
            labels.append(caption(HELD_OUT_TEMPLATES[0], c, a))
    return image_grid(torch.stack(rows), ncol=per_row, scale=GRID_SCALE, row_labels=labels, label_width=200)


def _pct(x: float) -> str:
    return f"{100 * x:.2f}%"


def comparison_rows(main: dict[str, Any], t: dict[str, Any]) -> list[list[str]]:
    """Text-to-image vs class-conditional, same steps, same sampler settings and judge."""
    n, n_ref = t["held_out_samples"], t["fid_reference_images"]
    rows = [["metric", "text-to-image MMDiT", "class-conditional generator", "how"],
            ["class accuracy, held-out phrasings", _pct(t["class_accuracy_held_out"]), _pct(main["class_accuracy_cfg"]),
             f"{n} samples; pixel judge (class-conditional: asked by label)"]]
    if "class_accuracy_seen" in t:
        rows.append(["class accuracy, training phrasings", _pct(t["class_accuracy_seen"]), "",
                     f"{t['seen_samples']} samples; pixel judge"])
    rows.append(["attribute (dark / light) accuracy, held-out phrasings", _pct(t["attribute_accuracy_held_out"]),
                 "(not asked: 50%)", f"{n} samples; mean intensity vs class median (chance 50%)"])
    if "attribute_accuracy_seen" in t:
        rows.append(["attribute accuracy, training phrasings", _pct(t["attribute_accuracy_seen"]), "",
                     f"{t['seen_samples']} samples"])
    rows.append(["FID vs real test images", f"{t['fid_held_out']:.2f}", f"{main['fid_cfg']:.2f}",
                 f"N = {n} samples vs {n_ref} test images"])
    if "fid_real_floor" in t:
        rows.append(["FID floor: other real test images", f"{t['fid_real_floor']:.2f}", f"{t['fid_real_floor']:.2f}",
                     f"{n_ref} vs {n_ref} real images"])
    rows.append(["training steps", str(t["steps"]), "same", "equal by construction (t2i.generator's "
                 "train.steps = generator's)"])
    rows.append(["sampler", t["sampler"], main["cfg"], ""])
    return rows


def add_t2i_section(report, out: Path, main: dict[str, Any], t: dict[str, Any], per_row: int,
                    loss=None) -> None:
    """Write the grid (and ``loss``, the MMDiT's loss plot, when given) under ``out/figures`` and add
    the section to ``report``."""
    images = torch.load(out / "t2i" / "eval" / "images.pt", weights_only=True)
    folder = out / "figures"
    figures = [save_png(prompt_grid(images["images"], per_row), folder / "t2i_prompts.png")]
    if loss is not None:
        figures.append(save_png(loss, folder / "loss_t2i_generator.png"))
    train = "; ".join(f"“{p}”" for p in t["train_templates"])
    held = "; ".join(f"“{p}”" for p in t["held_out_templates"])
    text = (f"A small MMDiT (two streams, joint attention) conditioned on all-MiniLM-L6-v2 embeddings of "
            f"generated captions, trained on the class-conditional generator's latents for the same "
            f"{t['steps']} steps. Each training image's caption names its class in one of the training "
            f"phrasings ({train}) and says “dark” when its mean intensity is at or below its class's "
            f"median, else “light”. Evaluation asks in phrasings never seen in training ({held}); the "
            f"grid shows the first of them, one prompt per row.")
    report.add("Text-to-image (--t2i)", text, tables=[("text-to-image vs class-conditional, equal steps",
                                                         comparison_rows(main, t))], figures=figures)
