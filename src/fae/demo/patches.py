"""The demo's patch-level section: similarity maps and patch matches of EfficientNet tokens vs FAE
latents on the first ``eval.patch_images`` test images (``fae.evaluation.patch_study``).

The test images' tokens come from the demo's token cache (``split_tokens``); only their flipped and
shifted copies go through the backbone (2 x ``eval.patch_images`` images), so the step costs seconds.
:func:`patch_metrics` runs inside the evaluation (its numbers join ``metrics.json`` as ``patch_*``,
its figure data ``images.pt`` as ``patches``); :func:`add_patch_section` puts them in the report.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from fae.data.fashion_mnist import CLASS_NAMES
from fae.evaluation.patch_figures import patch_figure
from fae.evaluation.patch_study import PatchSettings, patch_study
from fae.images import save_png

SECTION = "Patch-level maps: backbone tokens vs FAE latents"


def patch_metrics(fae, tokens: torch.Tensor, images: torch.Tensor, labels: torch.Tensor,
                  ev) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """(``patch_*`` numbers, figure data) of the first ``ev.patch_images`` of the given test images
    (tokens [n, N, D] from the cache, uint8 images [n, C, H, W], labels [n])."""
    n = min(ev.patch_images, len(tokens))
    settings = PatchSettings(rows=min(ev.patch_rows, n), seed=ev.seed, batch_size=ev.batch_size)
    summary, data = patch_study(fae, images[:n], settings, tokens=tokens[:n], labels=labels[:n])
    data["labels"] = labels[:settings.rows]
    metrics = {f"patch_{k}": v for k, v in summary.items() if isinstance(v, (int, float))}
    return metrics, data


def patch_rows(m: dict[str, Any]) -> list[list[str]]:
    """The section's table: each check on tokens and latents beside its chance level."""
    rows = [["measure", "backbone tokens", "FAE latents", "chance", "queries"],
            ["similarity-map correlation (tokens vs latents, per query, mean)", "",
             f"{m['patch_map_correlation']:.3f}", "", str(m["patch_map_correlation_queries"])]]
    checks = (("flip", "left-right flip of the same image: match at the mirrored patch"),
              ("shift", f"shift right by {m.get('patch_shift_patches', 1)} patch(es): match at the shifted patch"),
              ("pair", "another test image of the same class: match at the same patch"))
    for name, label in checks:
        if f"patch_{name}_tokens" in m:
            rows.append([label, f"{m[f'patch_{name}_tokens']:.3f}", f"{m[f'patch_{name}_latents']:.3f}",
                         f"{m[f'patch_{name}_chance']:.3f}", str(m[f"patch_{name}_queries"])])
    return rows


def add_patch_section(report, out: Path, metrics: dict[str, Any]) -> None:
    """The figure (``out/figures/patch_maps.png``) and table; nothing when the evaluation predates them."""
    if "patch_map_correlation" not in metrics:
        return
    data = torch.load(out / "eval" / "images.pt", weights_only=True).get("patches")
    if data is None:
        return
    names = [CLASS_NAMES[int(c)] for c in data["labels"]]
    figure = save_png(patch_figure(data, names), out / "figures" / "patch_maps.png")
    radius = metrics["patch_radius"]
    text = (f"Cosine similarity of a query patch (boxed) with every patch of the same image, on the "
            f"backbone tokens and on the FAE latents, and the best cosine match in another test image "
            f"of the same class of up to 16 random foreground patches (K-Means, 2 clusters, on the tokens; "
            f"the background cluster is the one holding the image's corners). Numbers over the first "
            f"{metrics['patch_images']} test images: the correlation of each query's two maps, and the "
            f"share of foreground matches within {radius} patch(es) of the known position in a flipped or "
            f"shifted copy, or at the same place in another image of the class (Fashion-MNIST is centred). "
            f"On left-right symmetric garments the unmirrored patch looks like the mirrored one, so flip "
            f"agreement understates how well parts are found; the shift check has no such ambiguity.")
    report.add(SECTION, text, figures=[figure], tables=[("patch-level checks", patch_rows(metrics))])
