"""Held-out evaluation of the pixel decoder (stages Ib / II): PSNR, SSIM, optional rFID, a grid PNG.

Two inputs are decoded for every held-out image:
  (a) ``true``: the frozen backbone's clean tokens x          -> how well pixels are painted;
  (b) ``fae``:  the FAE's reconstruction x_hat = D(E(x))     -> the full image path of FAE.decode.
(b) needs an FAE (always there in stage II; in stage Ib when the config names one). Metric keys
are ``<decoder>/<input>/<metric>``, e.g. ``Ib/true/psnr``, ``II/fae/rfid``; stage II also scores
the untouched stage-Ib decoder, so one evaluation shows what fine-tuning bought.

Every score follows the library's rules: PSNR / SSIM are ``fae.evaluation.recon.mean_image_scores``
(decodings quantised to uint8 first, as a saved PNG holds them), rFID is the
``fae.evaluation.scorer.FIDScorer``'s, with the originals as its reference (FID at a few hundred
images is biased upwards: compare runs, not published numbers). The grid
``run_dir/recon_<step>.png`` shows one held-out image per row: original | each decoding.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from fae import distributed as du
from fae.data.batches import iterate_batches, map_batches
from fae.errors import ConfigError
from fae.evaluation.recon import match_reference, mean_image_scores
from fae.evaluation.scorer import FIDScorer
from fae.images import from_unit_range, image_grid, quantize, save_png


@dataclass
class PixelDecoderEvalConfig:
    """Held-out reconstruction metrics and the grid PNG written at each evaluation.

    Args:
        split: dataset split of the held-out images.
        limit: number of held-out images (``data``'s limit rule).
        batch_size: images per forward pass (also the token cache's backbone batch).
        rfid: also compute rFID over every held-out image (InceptionV3; slow on CPU).
        grid_images: images shown in ``run_dir/recon_<step>.png`` (0: no grid).
    """

    split: str = "test"
    limit: int = 256
    batch_size: int = 64
    rfid: bool = False
    grid_images: int = 8

    def validate(self) -> None:
        for key, low in (("limit", 2 if self.rfid else 1), ("batch_size", 1), ("grid_images", 0)):
            if getattr(self, key) < low:
                raise ConfigError(f"config key 'eval.{key}' must be >= {low}, got {getattr(self, key)}")


class HeldOut:
    """The held-out images and the decoder inputs made from them: the frozen networks run once.

    Args:
        dataset: the held-out images (items ``(uint8 image [C, H, W], label)``).
        tokens: their raw backbone tokens [N, T, D] (any float dtype, e.g. the token cache's).
        fae: a frozen FAE; adds the ``fae`` input x_hat [N, T, D].
        batch_size: items per forward pass.
    """

    def __init__(self, dataset, tokens: torch.Tensor, fae: nn.Module | None = None, batch_size: int = 64):
        self.images = torch.cat([images for images, _ in iterate_batches(dataset, batch_size)])  # uint8 [N, C, H, W]
        if len(self.images) != len(tokens):
            raise ConfigError(f"{len(self.images)} held-out images but {len(tokens)} token sets")
        self.batch_size = batch_size
        self.inputs = {"true": tokens}
        if fae is not None:
            self.inputs["fae"] = map_batches(lambda t: fae.decode_features(fae.encode(t)), tokens,
                                             batch_size, fae.latent_mean.device)  # x_hat [N, T, D]
        self._scorer = None  # FIDScorer with the originals' pool features as reference, made once

    @torch.no_grad()
    def decode(self, decoders: dict[str, nn.Module]) -> dict[str, torch.Tensor]:
        """``{"<decoder>/<input>": float [N, C, H, W] in [0, 1]}`` for every pair."""
        out = {}
        for name, decoder in decoders.items():
            device = next(decoder.parameters()).device
            for source, tokens in self.inputs.items():
                out[f"{name}/{source}"] = map_batches(lambda t: from_unit_range(decoder(t)), tokens,
                                                      self.batch_size, device)
        return out

    def scores(self, decoded: dict[str, torch.Tensor], rfid: bool) -> dict[str, float]:
        """PSNR / SSIM (and rFID) of every decoding against the originals."""
        metrics = {}
        for key, images in decoded.items():
            for metric, value in mean_image_scores(self.images, images, self.batch_size).items():
                metrics[f"{key}/{metric}"] = value
            if rfid:
                metrics[f"{key}/rfid"] = self.rfid(images)
        return metrics

    def rfid(self, decoded: torch.Tensor) -> float:
        """FID between the originals and the uint8-quantised decodings (collective under torchrun:
        the Inception passes are sharded over ranks)."""
        fake = quantize(decoded)  # uint8 [N, C, H, W]
        if self._scorer is None:  # originals at the decodings' channels and size
            self._scorer = FIDScorer(device=du.device(), batch_size=self.batch_size, progress=False)
            self._scorer.use_reference(self._scorer.features(quantize(match_reference(self.images, fake))))
        return self._scorer.fid(self._scorer.features(fake), reference_first=True)

    def save_grid(self, decoded: dict[str, torch.Tensor], path: Path, rows: int) -> Path:
        """One row per held-out image: original | each decoding (columns labelled by their key)."""
        columns = [d[:rows] for d in decoded.values()]  # float [rows, C, H, W] in [0, 1]
        columns.insert(0, match_reference(self.images[:rows], columns[0]))  # at the decodings' C, H, W
        tiles = torch.stack(columns, dim=1).flatten(0, 1)  # [rows * columns, C, H, W], row-major
        scale = max(1, 64 // tiles.shape[-1])
        grid = image_grid(tiles, ncol=len(columns), scale=scale, col_labels=["original", *decoded])
        return save_png(grid, path)

    def evaluate(self, decoders: dict[str, nn.Module], cfg: PixelDecoderEvalConfig, grid_path: Path
                 ) -> dict[str, float]:
        """The stage's ``evaluate``: decode, score, and (rank 0) write the grid."""
        decoded = self.decode(decoders)
        metrics = self.scores(decoded, cfg.rfid)
        if du.is_main() and cfg.grid_images > 0:
            self.save_grid(decoded, grid_path, cfg.grid_images)
        return metrics

