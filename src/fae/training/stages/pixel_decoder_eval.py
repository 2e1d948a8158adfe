"""Held-out reconstruction metrics of the pixel decoder (PSNR, SSIM, optional rFID) and its grid PNG.

Two inputs are decoded for every held-out image:
  (a) ``true``: the frozen backbone's clean tokens x          -> how well pixels are painted;
  (b) ``fae``:  the FAE's reconstruction x_hat = D(E(x))     -> the full image path of FAE.decode.
(b) needs an FAE (always there in stage II; in stage Ib when the config names one).
The grid ``run_dir/recon_<step>.png`` shows one held-out image per row: original | decoded ...
(stage II adds the stage-Ib decoder's output next to the fine-tuned one).
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from fae.autoencoder.pixel_decoder import to_pixels01


@torch.no_grad()
def decode_held_out(backbone: nn.Module, decoders: dict[str, nn.Module], dataset, batch_size: int = 64,
                    fae: nn.Module | None = None) -> dict[str, torch.Tensor]:
    """Decode every image of ``dataset``; returns {"original": uint8 [N, C, H, W],
    "<decoder>/true": float [N, C, H, W] in [0, 1], "<decoder>/fae": ... (with an FAE)}."""
    out: dict[str, list[torch.Tensor]] = {"original": []}
    for start in range(0, len(dataset), batch_size):
        images = torch.stack([dataset[i][0] for i in range(start, min(start + batch_size, len(dataset)))])
        out["original"].append(images)
        tokens = backbone(images)  # [B, N, D] raw
        x_hat = fae.decode_features(fae.encode(tokens)) if fae is not None else None
        for name, decoder in decoders.items():
            out.setdefault(f"{name}/true", []).append(to_pixels01(decoder(tokens)).cpu())
            if x_hat is not None:
                out.setdefault(f"{name}/fae", []).append(to_pixels01(decoder(x_hat)).cpu())
    return {k: torch.cat(v) for k, v in out.items()}


def quantize(images01: torch.Tensor) -> torch.Tensor:
    """float [0, 1] -> uint8 (what a saved PNG holds; metrics are computed on these)."""
    return (images01.clamp(0, 1) * 255).round().to(torch.uint8)


def image_scores(original: torch.Tensor, decoded: torch.Tensor) -> dict[str, float]:
    """Mean PSNR (dB) and SSIM of uint8-quantised decodings against the uint8 originals."""
    from fae.evaluation.image_metrics import psnr, ssim

    a = original.float() / 255.0
    b = quantize(decoded).float() / 255.0
    return {"psnr": float(torch.as_tensor(psnr(b, a)).mean()), "ssim": float(torch.as_tensor(ssim(b, a)).mean())}


@torch.no_grad()
def rfid(original: torch.Tensor, decoded: torch.Tensor, batch_size: int = 50) -> float:
    """FID between InceptionV3 pool features of the originals and of the decodings (uint8)."""
    from fae.evaluation.fid import fid_from_features
    from fae.evaluation.inception import load_inception

    net = load_inception()
    feats = []
    for images in (original, quantize(decoded)):
        feats.append(torch.cat([net(images[i:i + batch_size])["pool"] for i in range(0, len(images), batch_size)]))
    return fid_from_features(feats[0].numpy(), feats[1].numpy())


def score_all(decoded: dict[str, torch.Tensor], with_rfid: bool) -> dict[str, float]:
    """{"<decoder>/<input>/psnr": ..., ".../ssim": ..., ".../rfid": ...} for every decoding."""
    metrics = {}
    for key, images in decoded.items():
        if key == "original":
            continue
        for metric, value in image_scores(decoded["original"], images).items():
            metrics[f"{key}/{metric}"] = value
        if with_rfid:
            metrics[f"{key}/rfid"] = rfid(decoded["original"], images)
    return metrics


def save_grid(decoded: dict[str, torch.Tensor], path: Path, rows: int) -> Path:
    """One row per held-out image: original | each decoding (columns labelled by their key)."""
    from fae.io import atomic_write
    from fae.report import image_grid

    keys = list(decoded)
    columns = [decoded[k][:rows].float() / 255.0 if k == "original" else decoded[k][:rows] for k in keys]
    tiles = torch.stack(columns, dim=1).flatten(0, 1)  # [rows * len(keys), C, H, W]
    scale = max(1, 64 // tiles.shape[-1])
    grid = image_grid(tiles, ncol=len(keys), scale=scale, col_labels=keys)
    return atomic_write(path, lambda f: grid.save(f, format="PNG"))


def evaluate_reconstructions(stage, decoder: nn.Module, step: int, run_dir: Path) -> dict[str, float]:
    """The stage's ``evaluate``: metrics for this decoder (and, in stage II, the Ib decoder)."""
    from fae.training.distributed import is_main

    cfg = stage.config.eval
    label = "II" if stage.finetune else "Ib"
    decoders = {label: decoder}
    if stage.ib_decoder is not None:
        decoders = {"Ib": stage.ib_decoder, **decoders}
    was_training = decoder.training
    decoder.eval()
    decoded = decode_held_out(stage.backbone, decoders, stage.eval_dataset(), cfg.batch_size, stage.fae)
    decoder.train(was_training)
    metrics = score_all(decoded, cfg.rfid)
    if is_main() and cfg.grid_images > 0:
        save_grid(decoded, run_dir / f"recon_{step:07d}.png", cfg.grid_images)
    return metrics
