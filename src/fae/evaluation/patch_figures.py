"""The patch-map figure (the paper's Figs. 4, 8-11 in miniature), drawn from the tensors of
:func:`fae.evaluation.patch_study.figure_data`.

One row per image A, five panels: A with its query patch boxed; the cosine map of that query on the
backbone tokens; the same on the FAE latents (each map on its own colour scale, printed in the
panel title, with the row's map correlation); then A beside an image B with lines joining up to 16
random foreground patches of A to their best cosine match in B, on the tokens and on the latents.
"""
from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from fae.images import to_uint8_rgb
from fae.report import figure_image, pyplot

PANEL_INCHES = 1.8


def _rgb(image: torch.Tensor) -> np.ndarray:
    """uint8 [C, H, W] -> [H, W, 3] array for imshow."""
    return to_uint8_rgb(image[None])[0].permute(1, 2, 0).numpy()


def _centres(index: torch.Tensor, grid: tuple[int, int], size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Pixel centres (x, y) of patch indices on an image of ``size`` = (H, W)."""
    (h, w), (H, W) = grid, size
    index = index.numpy()
    return (index % w + 0.5) * W / w, (index // w + 0.5) * H / h


def _box(ax, query: int, grid: tuple[int, int], size: tuple[int, int]) -> None:
    (h, w), (H, W) = grid, size
    x0, y0 = (query % w) * W / w, (query // w) * H / h
    ax.add_patch(pyplot().Rectangle((x0, y0), W / w, H / h, fill=False, edgecolor="cyan", linewidth=1.5))


def _map_panel(ax, values: torch.Tensor, query: int, grid, size, title: str) -> None:
    H, W = size
    heat = values.view(*grid).numpy()
    ax.imshow(heat, cmap="magma", extent=(0, W, H, 0), interpolation="nearest")
    _box(ax, query, grid, size)
    ax.set_title(f"{title}\ncos {heat.min():.2f}..{heat.max():.2f}", fontsize=7)


def _match_panel(ax, image_a: np.ndarray, image_b: np.ndarray, sources: torch.Tensor, targets: torch.Tensor,
                 grid, title: str) -> None:
    H, W = image_a.shape[:2]
    ax.imshow(np.concatenate([image_a, image_b], axis=1))
    keep = sources >= 0
    xa, ya = _centres(sources[keep], grid, (H, W))
    xb, yb = _centres(targets[keep], grid, (H, W))
    colours = pyplot().cm.hsv(np.linspace(0, 1, max(len(xa), 1), endpoint=False))
    for k in range(len(xa)):
        ax.plot([xa[k], xb[k] + W], [ya[k], yb[k]], color=colours[k], linewidth=0.9, marker="o", markersize=2)
    ax.set_title(title, fontsize=7)


def patch_figure(data: dict[str, torch.Tensor], row_labels: list[str] | None = None) -> Image.Image:
    """The figure of ``data`` (see the module docstring) as an RGB PIL image."""
    plt = pyplot()
    grid = tuple(int(v) for v in data["grid"])
    rows = len(data["image_a"])
    fig, axes = plt.subplots(rows, 5, figsize=(PANEL_INCHES * 7, PANEL_INCHES * rows * 1.1), dpi=100,
                             gridspec_kw={"width_ratios": [1, 1, 1, 2, 2]}, squeeze=False)
    for r in range(rows):
        a, b = _rgb(data["image_a"][r]), _rgb(data["image_b"][r])
        size, query = a.shape[:2], int(data["query"][r])
        axes[r, 0].imshow(a)
        _box(axes[r, 0], query, grid, size)
        label = row_labels[r] if row_labels else f"image {r}"
        axes[r, 0].set_title(f"{label}: query patch", fontsize=7)
        corr = float(data["correlation"][r])
        _map_panel(axes[r, 1], data["map_tokens"][r], query, grid, size, "backbone tokens")
        _map_panel(axes[r, 2], data["map_latents"][r], query, grid, size, f"FAE latents (map r = {corr:.2f})")
        for col, space in ((3, "tokens"), (4, "latents")):
            _match_panel(axes[r, col], a, b, data["match_from"][r], data[f"match_{space}"][r], grid,
                         f"matches on {'backbone tokens' if space == 'tokens' else 'FAE latents'}")
        for ax in axes[r]:
            ax.set_xticks([])
            ax.set_yticks([])
    fig.tight_layout()
    return figure_image(fig)
