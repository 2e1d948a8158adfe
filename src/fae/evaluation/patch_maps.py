"""Patch-level maps of frozen-backbone tokens vs FAE latents (the paper's Figs. 4, 8-11), and the
held-out checks that summarise them in numbers.

Every function takes patch features ``[B, N, D]`` laid out row-major on a grid ``(h, w)`` (patch
``n`` sits at row ``n // w``, column ``n % w``): backbone tokens as they are (raw, not the FAE's
normalised ones), FAE latents ``z [B, c, h, w]`` (the posterior mean) as ``[B, N, c]``
(:func:`latent_patches`). The protocol:

* similarity map: ``cos(f_q, f_k)`` of every query patch q with every key patch k of the same
  image, ``[B, N, N]``, one batched matmul of L2-normalised features (:func:`similarity_maps`);
* map correlation: per query, the Pearson correlation of its token map with its latent map over
  the N - 1 other patches (the query itself is 1 in both maps and is left out); the summary is the
  mean over every query patch of every image. A query whose map is constant in either space
  (e.g. an all-zero token) has no correlation: it is skipped and counted (:func:`map_correlation`);
* foreground: K-Means (seeded k-means++, then Lloyd; :func:`kmeans`) on each image's L2-normalised
  backbone tokens. The background cluster is the one holding most of the grid's four corner patches
  (ties: most patches of the outer ring); every other cluster is foreground. If that leaves no
  foreground (one cluster took every patch), every patch counts as foreground (:func:`foreground_masks`);
* matching: a query patch of image A goes to the patch of image B with the highest cosine
  (:func:`match_patches`), over all of B's patches;
* held-out checks (:func:`agreement`): A's foreground patches are matched in an image B whose
  correspondence to A is known - A flipped left-right (patch (i, j) -> (i, w-1-j)), A shifted right
  by s patches (-> (i, j+s); queries that leave the grid are dropped), or another image of the same
  class (Fashion-MNIST is centred and size-normalised, so the same part sits at about the same
  place: (i, j) -> (i, j)). A match counts when it lies within ``radius`` patches (Chebyshev
  distance) of the expected position; ``chance`` is the same fraction for a match drawn uniformly
  over the N patches. Caveat of the flip check: on a left-right symmetric object the unmirrored
  position looks the same as the mirrored one, so flip agreement is a lower bound of how well parts
  are found; the shift check has no such ambiguity.
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from fae.errors import DataError

TRANSFORMS = ("flip", "shift")


# ------------------------------------------------------------------------------------------ maps


def latent_patches(z: torch.Tensor) -> torch.Tensor:
    """FAE latents [B, c, h, w] -> one feature per patch [B, N, c] (row-major, like the tokens)."""
    return z.flatten(2).transpose(1, 2)


def similarity_maps(features: torch.Tensor) -> torch.Tensor:
    """Cosine similarity of every patch with every patch of the same image: [B, N, D] -> [B, N, N]
    (row q is query q's map). A zero feature has similarity 0 with everything."""
    unit = F.normalize(features.float(), dim=-1)  # [B, N, D]
    return unit @ unit.transpose(1, 2)  # [B, N, N]


def query_correlations(maps_a: torch.Tensor, maps_b: torch.Tensor) -> torch.Tensor:
    """Pearson correlation [B, N] between row q of ``maps_a`` and of ``maps_b`` ([B, N, N] each),
    over the keys k != q; NaN where either row is constant."""
    if maps_a.shape != maps_b.shape or maps_a.ndim != 3 or maps_a.shape[1] != maps_a.shape[2]:
        raise ValueError(f"need two [B, N, N] maps of one shape, got {list(maps_a.shape)} and {list(maps_b.shape)}")
    B, N, _ = maps_a.shape
    if N < 3:
        raise ValueError(f"a map correlation needs at least 3 patches, got {N}")
    others = ~torch.eye(N, dtype=torch.bool, device=maps_a.device)  # [N, N]
    a = maps_a.double()[:, others].view(B, N, N - 1)
    b = maps_b.double()[:, others].view(B, N, N - 1)
    a, b = a - a.mean(-1, keepdim=True), b - b.mean(-1, keepdim=True)
    norms = (a.square().sum(-1) * b.square().sum(-1)).sqrt()  # [B, N]
    r = (a * b).sum(-1) / norms.clamp_min(1e-300)
    return torch.where(norms > 1e-12, r, torch.full_like(r, float("nan")))


def map_correlation(features_a: torch.Tensor, features_b: torch.Tensor) -> dict[str, Any]:
    """The map-correlation summary of two feature sets of the same images ([B, N, *] each):
    ``mean`` over all defined queries, ``per_image`` [B] means, ``queries`` used, ``skipped``."""
    r = query_correlations(similarity_maps(features_a), similarity_maps(features_b))  # [B, N]
    defined = ~r.isnan()
    if not defined.any():
        raise DataError("every similarity map is constant: the features carry no patch structure")
    per_image = torch.where(defined, r, 0).sum(1) / defined.sum(1).clamp_min(1)
    per_image = torch.where(defined.any(1), per_image, torch.full_like(per_image, float("nan")))
    return {"mean": float(r[defined].mean()), "per_image": per_image.float().cpu(),
            "queries": int(defined.sum()), "skipped": int((~defined).sum())}


# ------------------------------------------------------------------------------------------ K-Means


def kmeans(x: torch.Tensor, k: int, iters: int = 50, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """K-Means of each of B point sets on its own: x [B, M, D] -> (labels [B, M], centroids [B, k, D]).

    Seeding is k-means++ (Arthur & Vassilvitskii 2007: each next centre drawn with probability
    proportional to the squared distance to the nearest chosen one) from a CPU generator seeded with
    ``seed``; then Lloyd iterations until no label changes (at most ``iters``). An emptied cluster
    keeps its previous centre.
    """
    B, M, _ = x.shape
    if not 1 <= k <= M:
        raise ValueError(f"K-Means needs 1 <= k <= {M} points, got k={k}")
    x = x.float()
    rows = torch.arange(B, device=x.device)
    g = torch.Generator().manual_seed(seed)
    centroids = x[rows, torch.randint(M, (B,), generator=g).to(x.device)][:, None]  # [B, 1, D]
    for _ in range(1, k):
        d2 = torch.cdist(x, centroids).square().min(dim=-1).values.double().cpu()  # [B, M]
        d2 = torch.where(d2.sum(1, keepdim=True) > 0, d2, torch.ones_like(d2))  # all points taken: uniform
        pick = torch.multinomial(d2, 1, generator=g).squeeze(1).to(x.device)  # [B]
        centroids = torch.cat([centroids, x[rows, pick][:, None]], dim=1)
    labels = torch.cdist(x, centroids).argmin(-1)  # [B, M]
    for _ in range(iters):
        onehot = F.one_hot(labels, k).to(x.dtype)  # [B, M, k]
        counts = onehot.sum(1)[..., None]  # [B, k, 1]
        centroids = torch.where(counts > 0, (onehot.transpose(1, 2) @ x) / counts.clamp_min(1), centroids)
        new = torch.cdist(x, centroids).argmin(-1)
        if torch.equal(new, labels):
            break
        labels = new
    return labels, centroids


def border_positions(grid: tuple[int, int]) -> tuple[list[int], torch.Tensor]:
    """(the four corner patch indices, bool [N] of the outer ring) of a grid (h, w)."""
    h, w = grid
    corners = sorted({0, w - 1, (h - 1) * w, h * w - 1})
    ring = torch.zeros(h, w, dtype=torch.bool)
    ring[0, :], ring[-1, :], ring[:, 0], ring[:, -1] = True, True, True, True
    return corners, ring.flatten()


def foreground_masks(tokens: torch.Tensor, grid: tuple[int, int], clusters: int = 2, iters: int = 50,
                     seed: int = 0) -> torch.Tensor:
    """bool [B, N]: the patches outside each image's background cluster (see the module docstring)."""
    _check_grid(tokens, grid)
    labels, _ = kmeans(F.normalize(tokens.float(), dim=-1), clusters, iters, seed)  # [B, N]
    corners, ring = border_positions(grid)
    corner_votes = F.one_hot(labels[:, corners], clusters).sum(1)  # [B, k]
    ring_votes = F.one_hot(labels[:, ring.to(labels.device)], clusters).sum(1)  # [B, k], each < N + 1
    background = (corner_votes * (tokens.shape[1] + 1) + ring_votes).argmax(-1)  # corners first, then ring
    mask = labels != background[:, None]
    return torch.where(mask.any(1, keepdim=True), mask, torch.ones_like(mask))


# ------------------------------------------------------------------------------------------ matching


def match_patches(features_a: torch.Tensor, features_b: torch.Tensor) -> torch.Tensor:
    """For each patch of A, the index of the most cosine-similar patch of B: [B, N, D] x [B, M, D] -> [B, N]."""
    a, b = F.normalize(features_a.float(), dim=-1), F.normalize(features_b.float(), dim=-1)
    return (a @ b.transpose(1, 2)).argmax(-1)


def flip_targets(grid: tuple[int, int]) -> torch.Tensor:
    """[N]: where patch (i, j) lands when the image is flipped left-right, (i, w-1-j)."""
    h, w = grid
    return torch.arange(h * w).view(h, w).flip(1).flatten()


def shift_targets(grid: tuple[int, int], patches: int) -> torch.Tensor:
    """[N]: where patch (i, j) lands when the image moves right by ``patches``, (i, j+patches); -1 off the grid."""
    h, w = grid
    col = torch.arange(w) + patches
    target = torch.arange(h)[:, None] * w + col[None, :]
    return torch.where((col >= 0) & (col < w), target, -1).flatten()


def identity_targets(grid: tuple[int, int]) -> torch.Tensor:
    """[N]: every patch expected at its own position (aligned images of one class)."""
    return torch.arange(grid[0] * grid[1])


def _chebyshev(a: torch.Tensor, b: torch.Tensor, w: int) -> torch.Tensor:
    return torch.maximum((a // w - b // w).abs(), (a % w - b % w).abs())


def chance_agreement(expected: torch.Tensor, valid: torch.Tensor, grid: tuple[int, int], radius: int) -> float:
    """Mean over the valid queries of P(a uniformly random patch lies within ``radius`` of the
    expected one): expected [B, N] (or [N]), valid bool [B, N]."""
    h, w = grid
    pos = expected.expand_as(valid).clamp_min(0)[valid]
    i, j = pos // w, pos % w
    rows = (i + radius).clamp(max=h - 1) - (i - radius).clamp(min=0) + 1
    cols = (j + radius).clamp(max=w - 1) - (j - radius).clamp(min=0) + 1
    return float((rows * cols).double().mean() / (h * w))


def agreement(features_a: torch.Tensor, features_b: torch.Tensor, expected: torch.Tensor,
              queries: torch.Tensor, grid: tuple[int, int], radius: int = 1) -> dict[str, float]:
    """Share of the query patches of A whose match in B lies within ``radius`` of the expected patch.

    Args:
        features_a, features_b: [B, N, D] patch features of A and of its counterpart B.
        expected: [N] or [B, N] index in B where each patch of A should land (-1: nowhere; not asked).
        queries: bool [B, N], the patches of A that are asked (e.g. the foreground).
        grid: (h, w) of both images.
        radius: tolerance in patches (Chebyshev distance).
    Returns ``agreement``, ``chance`` (for uniformly random matches) and the number of ``queries``.
    """
    _check_grid(features_a, grid)
    expected = expected.to(queries.device).expand_as(queries)
    valid = queries & (expected >= 0)
    if not valid.any():
        raise DataError("no query patch is left for the agreement check (empty foreground, or every "
                        "expected position is off the grid)")
    match = match_patches(features_a, features_b).to(queries.device)  # [B, N]
    hit = _chebyshev(match, expected.clamp_min(0), grid[1]) <= radius
    return {"agreement": float(hit[valid].double().mean()), "chance": chance_agreement(expected, valid, grid, radius),
            "queries": int(valid.sum())}


def same_class_partners(labels: torch.Tensor) -> torch.Tensor:
    """[B]: for image i, the next image (cyclically, in order) with the same label; -1 when it is
    alone in its class or unlabelled (label < 0)."""
    labels = labels.tolist()
    partners = []
    for i, label in enumerate(labels):
        later = [j for j in list(range(i + 1, len(labels))) + list(range(i)) if labels[j] == label]
        partners.append(later[0] if later and label >= 0 else -1)
    return torch.tensor(partners, dtype=torch.long)


def _check_grid(features: torch.Tensor, grid: tuple[int, int]) -> None:
    if features.ndim != 3 or features.shape[1] != grid[0] * grid[1]:
        raise ValueError(f"features {list(features.shape)} do not lie on a {grid[0]}x{grid[1]} grid")
