"""Pooled features for linear probing: the one rule, used by ``fae eval probe``, the autoencoder
stage's probe metrics and the demo.

From raw backbone tokens x [N, T, D] (:func:`probe_features`):
* ``raw``: x averaged over tokens -> [N, D];
* ``latent``: the FAE's posterior mean z = encode(x) [N, c, h, w] averaged over positions -> [N, c];
* ``reconstructed``: decode_features(z) [N, T, D] averaged over tokens -> [N, D] (the paper's probe
  on FAE-reconstructed DINOv2 features; it must stay close to ``raw``).

Image-level wrappers (:class:`BackboneFeatures`, :class:`FAEFeatures`; :class:`HeadFeatures` for a
given head's input, the zero-shot protocol) run the backbone first, and
:func:`pooled_features` streams a dataset through one of them, sharded over ranks under torchrun and
gathered back in dataset order.
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch

from fae import distributed as dist
from fae.data.batches import iterate_batches
from fae.errors import ConfigError
from fae.evaluation.linear_head import head_input

KINDS = ("raw", "latent", "reconstructed")


def _check_kinds(kinds: Sequence[str], fae) -> tuple[str, ...]:
    kinds = tuple(kinds)
    unknown = [k for k in kinds if k not in KINDS]
    if unknown or not kinds:
        raise ConfigError(f"probe feature kinds must be a non-empty subset of {list(KINDS)}, got {list(kinds)}")
    if fae is None and kinds != ("raw",):
        raise ConfigError(f"probe features {[k for k in kinds if k != 'raw']} need an FAE")
    return kinds


def _pool(fae, tokens: torch.Tensor, kinds: tuple[str, ...]) -> dict[str, torch.Tensor]:
    """One batch of raw tokens [b, T, D] -> {kind: float32 [b, F]} on the CPU."""
    out = {}
    if "raw" in kinds:
        out["raw"] = tokens.float().mean(dim=1)  # [b, D]
    if "latent" in kinds or "reconstructed" in kinds:
        z = fae.encode(tokens)  # [b, c, h, w], posterior mean
        if "latent" in kinds:
            out["latent"] = z.mean(dim=(2, 3))  # [b, c]
        if "reconstructed" in kinds:
            out["reconstructed"] = fae.decode_features(z).mean(dim=1)  # [b, T, D] -> [b, D]
    return {k: v.float().cpu() for k, v in out.items()}


@torch.no_grad()
def probe_features(fae, tokens: torch.Tensor, kinds: Sequence[str], batch_size: int = 256
                   ) -> dict[str, torch.Tensor]:
    """Pooled probe features of raw backbone tokens.

    Args:
        fae: an FAE (``encode(tokens) -> z [b, c, h, w]``, ``decode_features(z) -> [b, T, D]``);
            may be None when ``kinds`` is just ("raw",).
        tokens: raw backbone tokens [N, T, D] (any device; batches are moved by the FAE).
        kinds: subset of ``KINDS``.
        batch_size: tokens per FAE pass.

    Returns:
        {kind: float32 [N, F]} on the CPU (F = D for raw / reconstructed, c for latent).
    """
    kinds = _check_kinds(kinds, fae)
    if tokens.ndim != 3:
        raise ConfigError(f"probe features take raw tokens [N, T, D], got shape {list(tokens.shape)}")
    if batch_size < 1:
        raise ConfigError(f"probe feature batch_size must be >= 1, got {batch_size}")
    parts: dict[str, list[torch.Tensor]] = {k: [] for k in kinds}
    for start in range(0, tokens.shape[0], batch_size):
        for kind, pooled in _pool(fae, tokens[start:start + batch_size], kinds).items():
            parts[kind].append(pooled)
    if tokens.shape[0] == 0:
        dims = {"raw": tokens.shape[-1], "reconstructed": tokens.shape[-1],
                "latent": fae.latent_shape[0] if fae is not None else 0}
        return {k: torch.empty(0, dims[k]) for k in kinds}
    return {k: torch.cat(v) for k, v in parts.items()}


class BackboneFeatures:
    """uint8 images [B, C, H, W] -> mean-pooled raw tokens [B, D] of a frozen backbone.

    Args:
        backbone: a ``fae.backbones`` backbone.
    """

    def __init__(self, backbone):
        self.backbone = backbone
        self.name = backbone.info.name

    @torch.no_grad()
    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        return probe_features(None, self.backbone(images), ("raw",))["raw"]


class FAEFeatures:
    """uint8 images [B, C, H, W] -> pooled probe features [B, F] of one kind, through an FAE.

    Args:
        fae: an ``fae.autoencoder.FAE`` (its backbone is loaded lazily).
        kind: "raw" (the FAE's backbone tokens), "latent" or "reconstructed".
    """

    def __init__(self, fae, kind: str):
        _check_kinds((kind,), fae)
        self.fae, self.kind = fae, kind
        self.name = fae.config.backbone

    @torch.no_grad()
    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        tokens = self.fae.tokens_from(images)  # [B, T, D]
        return probe_features(self.fae, tokens, (self.kind,), batch_size=max(1, len(tokens)))[self.kind]


class HeadFeatures:
    """uint8 images [B, C, H, W] -> a given head's input for the raw tokens and, with an FAE, for
    its reconstructions, side by side: [B, len(kinds) * F] (in the order of :attr:`kinds`).

    The zero-shot protocol (paper Table 1): one head, never trained on reconstructions, scores
    them all. Its input is :func:`fae.evaluation.linear_head.head_input` (``concat(CLS,
    mean(patches))`` for the released DINOv2 heads, ``mean(patches)`` for a head on pooled tokens);
    the reconstruction is :meth:`FAE.reconstruct` (posterior mean). The kinds:

    * ``raw``: the backbone's own tokens;
    * ``reconstructed``: the FAE's reconstruction, CLS included: for a CLS + patch-mean head only
      with an FAE trained with ``extra_tokens: reconstruct`` (the CLS decoded from the latent);
    * ``pass_through`` (CLS + patch-mean heads): the *original* CLS beside the reconstructed patch
      mean - half the head's input is then not a reconstruction.

    Args:
        head: a :class:`fae.evaluation.linear_head.LinearHead`.
        backbone: the frozen backbone (used when ``fae`` is None).
        fae: an ``fae.autoencoder.FAE`` (its own backbone is used).
    """

    def __init__(self, head, backbone=None, fae=None):
        if (backbone is None) == (fae is None):
            raise ConfigError("HeadFeatures needs exactly one of backbone= and fae=")
        self.head, self.backbone, self.fae = head, backbone, fae
        self.kinds = head_kinds(head, fae)
        self.name = fae.config.backbone if fae is not None else backbone.info.name

    @torch.no_grad()
    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        out = self.fae.outputs_from(images) if self.fae is not None else self.backbone.forward_all(images)
        parts = [head_input(out.patches, out.cls, self.head)]  # [B, F]
        if self.fae is not None:
            mode = "reconstruct" if self.fae.config.extra_tokens == "reconstruct" else "pass_through"
            rec = self.fae.reconstruct(out, mode)  # one encode / decode for every kind
            if "reconstructed" in self.kinds:
                parts.append(head_input(rec.patches, rec.cls, self.head))
            if "pass_through" in self.kinds:
                parts.append(head_input(rec.patches, out.cls, self.head))  # the original CLS
        return torch.cat(parts, dim=1).float().cpu()  # [B, len(kinds) * F]


def head_kinds(head, fae=None) -> tuple[str, ...]:
    """What :class:`HeadFeatures` scores: ("raw",) without an FAE; with one, ("raw",
    "reconstructed") for a head on the patch mean, and for a CLS + patch-mean head ("raw",
    "reconstructed", "pass_through") when the FAE reconstructs its CLS, else ("raw", "pass_through")."""
    if fae is None:
        return ("raw",)
    if head.in_features != 2 * fae.config.token_dim:
        return ("raw", "reconstructed")
    if fae.config.extra_tokens == "reconstruct":
        return ("raw", "reconstructed", "pass_through")
    return ("raw", "pass_through")


def pooled_features(encoder: Callable[[torch.Tensor], torch.Tensor], dataset, *, batch_size: int = 128,
                    progress: bool = True, desc: str = "features") -> tuple[torch.Tensor, torch.Tensor]:
    """(features [N, F] float32, labels [N] int64) of ``dataset`` (items ``(uint8 image, label)``)
    through ``encoder`` (images -> [b, F]); each rank encodes its shard, then all are gathered."""
    shard = dist.shard_range(len(dataset))
    feats, labels = [], []
    for images, y in iterate_batches(dataset, batch_size, indices=shard, desc=desc,
                                     progress=progress and dist.is_main()):
        feats.append(encoder(images).float().cpu())  # [b, F]
        labels.append(y)
    feats = torch.cat(feats) if feats else torch.empty(0, 0)
    labels = torch.cat(labels) if labels else torch.empty(0, dtype=torch.long)
    return dist.gather_rows(feats), dist.gather_rows(labels)
