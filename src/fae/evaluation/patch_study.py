"""Images + an FAE -> the patch-map numbers and the data of their figure (``fae viz patches``, and
the demo report's patch section). The measures themselves are :mod:`fae.evaluation.patch_maps`.

For images ``[B, C, H, W]`` (uint8) and an FAE (its backbone loads from the registry, or is
attached): backbone tokens ``x`` (given, e.g. from a token cache, or computed), latents ``z =
encode(x)`` (posterior mean); the foreground of each image from K-Means on ``x``; then, side by side
for ``x`` and ``z``:

* ``map_correlation``: the mean Pearson correlation of the token and latent similarity maps;
* ``flip_*``: agreement of A's foreground matches in A flipped left-right with the mirrored position;
* ``shift_*``: the same in A shifted right by ``shift`` patches (zero fill: the background of
  Fashion-MNIST; a black border on photos) with the shifted position;
* ``pair_*``: in the next image of the same class (only when labels are given), with the same
  position;

each with its chance level and query count. The flipped / shifted copies go through the backbone
(2B images); nothing else does.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from fae.data.batches import map_batches
from fae.data.datasets import DataConfig
from fae.errors import ConfigError, DataError
from fae.evaluation import patch_maps as pm

SPACES = ("tokens", "latents")


@dataclass
class PatchSettings:
    """How the patch study runs.

    Args:
        clusters: K-Means clusters per image for the foreground (the background is one of them).
        kmeans_iters: at most this many Lloyd iterations.
        pairs: query patches drawn per figure row for the cross-image matching lines (paper: 16).
        radius: tolerance of the held-out checks, in patches (Chebyshev distance).
        shift: the shift check moves images right by this many patches.
        seed: seeds K-Means and the drawn query patches.
        batch_size: images per backbone / encoder pass.
        rows: images drawn in the figure (the first ones).
    """

    clusters: int = 2
    kmeans_iters: int = 50
    pairs: int = 16
    radius: int = 1
    shift: int = 1
    seed: int = 0
    batch_size: int = 64
    rows: int = 4

    def validate(self) -> None:
        for key in ("clusters", "kmeans_iters", "pairs", "shift", "batch_size", "rows"):
            if getattr(self, key) < 1:
                raise ConfigError(f"patch setting '{key}' must be >= 1, got {getattr(self, key)}")
        if self.radius < 0:
            raise ConfigError(f"patch setting 'radius' must be >= 0, got {self.radius}")


@dataclass
class PatchesConfig:
    """``fae viz patches`` settings (the verb is ``fae.commands.viz``).

    Args:
        fae: exported FAE folder (or a run folder holding ``export/``); required.
        data: where the images come from (default: Fashion-MNIST test split; a folder:
            ``data.name=folder data.root=DIR``, what ``--images DIR`` sets).
        indices: which items of ``data`` (null: 0..7, or all of a smaller set); at least 2.
        patches: the study's settings (clusters, pairs, radius, shift, seed, rows, batch_size);
            here ``rows`` defaults to 64: one figure row per image, up to 64.
        device: "auto" (CUDA when available), "cpu", "cuda", ...
        out: the PNG to write; the numbers go to the same name with ``.json``.
    """

    fae: str | None = None
    data: DataConfig = field(default_factory=lambda: DataConfig(split="test"))
    indices: list[int] | None = None
    patches: PatchSettings = field(default_factory=lambda: PatchSettings(rows=64))
    device: str = "auto"
    out: str = "runs/viz/patches.png"

    def validate(self) -> None:
        if not self.fae:
            raise ConfigError("config key 'fae': the patch maps need an exported FAE folder (--fae DIR)")
        if self.indices is not None and len(self.indices) < 2:
            raise ConfigError(f"config key 'indices': the patch maps need at least 2 images, got {self.indices}")
        self.patches.validate()


def shift_images(images: torch.Tensor, grid: tuple[int, int], patches: int) -> tuple[torch.Tensor, int]:
    """Move images [B, C, H, W] right by ``patches`` token columns (in pixels: round(patches * W / w),
    zero fill). Returns the shifted images and the shift measured in patches (rounded)."""
    width = images.shape[-1]
    pixels = round(patches * width / grid[1])
    if not 0 < pixels < width:
        raise DataError(f"a shift of {patches} patch(es) is {pixels} px on {width} px wide images: "
                        "choose a shift inside the image")
    shifted = torch.zeros_like(images)
    shifted[..., pixels:] = images[..., :width - pixels]
    return shifted, round(pixels * grid[1] / width)


def _features(fae, images_or_tokens: torch.Tensor, batch_size: int) -> dict[str, torch.Tensor]:
    """{"tokens": x [B, N, D], "latents": z as [B, N, c]} on the CPU."""
    tokens = map_batches(fae.tokens_from, images_or_tokens, batch_size)  # [B, N, D]
    latents = pm.latent_patches(map_batches(fae.encode, tokens, batch_size))  # [B, N, c]
    return {"tokens": tokens.float(), "latents": latents.float()}


def _checks(name: str, a: dict, b: dict, expected: torch.Tensor, queries: torch.Tensor, grid, radius) -> dict:
    out: dict[str, Any] = {}
    for space in SPACES:
        result = pm.agreement(a[space], b[space], expected, queries, grid, radius)
        out[f"{name}_{space}"] = result["agreement"]
    out[f"{name}_chance"], out[f"{name}_queries"] = result["chance"], result["queries"]
    return out


@torch.no_grad()
def patch_study(fae, images: torch.Tensor, settings: PatchSettings, tokens: torch.Tensor | None = None,
                labels: torch.Tensor | None = None) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """(summary numbers, figure data) of ``images`` (uint8 [B, C, H, W], B >= 2) under ``fae``.

    ``tokens``: the images' backbone tokens [B, N, D] when already known (else computed);
    ``labels`` [B]: enables the same-class check and pairs each figure row with an image of its class.
    """
    settings.validate()
    if len(images) < 2:
        raise DataError(f"the patch study needs at least 2 images, got {len(images)}")
    grid = tuple(fae.config.grid)
    feats = _features(fae, images if tokens is None else tokens, settings.batch_size)
    fg = pm.foreground_masks(feats["tokens"], grid, settings.clusters, settings.kmeans_iters, settings.seed)
    corr = pm.map_correlation(feats["tokens"], feats["latents"])
    summary: dict[str, Any] = {"images": len(images), "grid": list(grid), "radius": settings.radius,
                               "map_correlation": corr["mean"], "map_correlation_queries": corr["queries"],
                               "map_correlation_skipped": corr["skipped"],
                               "foreground_fraction": float(fg.float().mean())}
    flipped = _features(fae, images.flip(-1), settings.batch_size)
    summary.update(_checks("flip", feats, flipped, pm.flip_targets(grid), fg, grid, settings.radius))
    shifted_images, moved = shift_images(images, grid, settings.shift)
    shifted = _features(fae, shifted_images, settings.batch_size)
    summary["shift_patches"] = moved
    summary.update(_checks("shift", feats, shifted, pm.shift_targets(grid, moved), fg, grid, settings.radius))
    partners = pm.same_class_partners(labels) if labels is not None else torch.full((len(images),), -1)
    paired = partners >= 0
    if paired.any():
        other = {s: f[partners.clamp_min(0)] for s, f in feats.items()}
        summary.update(_checks("pair", feats, other, pm.identity_targets(grid), fg & paired[:, None], grid,
                               settings.radius))
    return summary, figure_data(images, feats, fg, partners, grid, settings, corr["per_image"])


def _centre_query(mask: torch.Tensor, grid: tuple[int, int]) -> int:
    """The foreground patch nearest the foreground's centre of mass (the query of the maps)."""
    h, w = grid
    pos = torch.stack(torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij"), -1).view(-1, 2).float()
    centre = pos[mask].mean(0)
    dist = (pos - centre).square().sum(-1).masked_fill(~mask, float("inf"))
    return int(dist.argmin())


def figure_data(images: torch.Tensor, feats: dict[str, torch.Tensor], fg: torch.Tensor, partners: torch.Tensor,
                grid: tuple[int, int], settings: PatchSettings, correlation: torch.Tensor) -> dict[str, torch.Tensor]:
    """Tensors :func:`fae.evaluation.patch_figures.patch_figure` draws, for the first ``settings.rows``
    images: row r shows image A = r (its query patch and the similarity map of it in each space) and
    the matches of up to ``settings.pairs`` random foreground patches of A in image B (the next image
    of A's class when there is one, else the next image)."""
    rows = min(settings.rows, len(images))
    g = torch.Generator().manual_seed(settings.seed)
    query, sources, others = [], torch.full((rows, settings.pairs), -1), []
    maps = {s: pm.similarity_maps(f[:rows]) for s, f in feats.items()}  # [rows, N, N]
    matched = {s: torch.full((rows, settings.pairs), -1) for s in SPACES}
    for r in range(rows):
        b = int(partners[r]) if partners[r] >= 0 else (r + 1) % len(images)
        others.append(b)
        query.append(_centre_query(fg[r], grid))
        candidates = fg[r].nonzero().flatten()
        chosen = candidates[torch.randperm(len(candidates), generator=g)[:settings.pairs]]
        sources[r, :len(chosen)] = chosen
        for s in SPACES:
            best = pm.match_patches(feats[s][r:r + 1, chosen], feats[s][b:b + 1])[0]  # [k]
            matched[s][r, :len(chosen)] = best
    query_t = torch.tensor(query)
    data = {"image_a": images[:rows], "image_b": images[others], "grid": torch.tensor(grid), "query": query_t,
            "match_from": sources, "correlation": correlation[:rows]}
    for s in SPACES:
        data[f"map_{s}"] = maps[s][torch.arange(rows), query_t]  # [rows, N]
        data[f"match_{s}"] = matched[s]
    return data
