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

from fae.images import from_unit_range


@torch.no_grad()
def held_out_inputs(backbone: nn.Module, dataset, batch_size: int = 64, fae: nn.Module | None = None
                    ) -> dict[str, torch.Tensor]:
    """{"original": uint8 [N, C, H, W], "true": tokens [N, T, D], "fae": x_hat [N, T, D] (with an FAE)}."""
    out: dict[str, list[torch.Tensor]] = {"original": [], "true": []}
    for start in range(0, len(dataset), batch_size):
        images = torch.stack([dataset[i][0] for i in range(start, min(start + batch_size, len(dataset)))])
        tokens = backbone(images)  # [B, T, D] raw
        out["original"].append(images)
        out["true"].append(tokens.cpu())
        if fae is not None:
            out.setdefault("fae", []).append(fae.decode_features(fae.encode(tokens)).cpu())  # x_hat
    return {k: torch.cat(v) for k, v in out.items()}


@torch.no_grad()
def decode_inputs(decoders: dict[str, nn.Module], inputs: dict[str, torch.Tensor], batch_size: int = 64
                  ) -> dict[str, torch.Tensor]:
    """{"original": ..., "<decoder>/<input>": float [N, C, H, W] in [0, 1]} for every pair."""
    out = {"original": inputs["original"]}
    for name, decoder in decoders.items():
        device = next(decoder.parameters()).device
        for source in ("true", "fae"):
            if source not in inputs:
                continue
            tokens = inputs[source]
            out[f"{name}/{source}"] = torch.cat([
                from_unit_range(decoder(tokens[i:i + batch_size].to(device))).cpu()
                for i in range(0, len(tokens), batch_size)])
    return out


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
def inception_pool(net: nn.Module, images: torch.Tensor, batch_size: int = 50) -> torch.Tensor:
    """uint8 images [N, C, H, W] -> InceptionV3 pool_3 features [N, 2048] (the FID features)."""
    return torch.cat([net(images[i:i + batch_size])["pool"].cpu() for i in range(0, len(images), batch_size)])


def score_all(decoded: dict[str, torch.Tensor], rfid_images: int = 0) -> dict[str, float]:
    """{"<decoder>/<input>/psnr": ..., "/ssim": ..., "/rfid": ...} for every decoding. rFID is the
    FID between the first ``rfid_images`` held-out originals and their decodings (InceptionV3
    pool features; 0 skips it). PSNR / SSIM use every image."""
    metrics = {}
    with_rfid = rfid_images > 0
    if with_rfid:
        from fae.evaluation.fid import fid_from_features
        from fae.evaluation.inception import load_inception

        net = load_inception()
        real_features = inception_pool(net, decoded["original"][:rfid_images]).numpy()
    for key, images in decoded.items():
        if key == "original":
            continue
        for metric, value in image_scores(decoded["original"], images).items():
            metrics[f"{key}/{metric}"] = value
        if with_rfid:
            fake_features = inception_pool(net, quantize(images[:rfid_images])).numpy()
            metrics[f"{key}/rfid"] = fid_from_features(real_features, fake_features)
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
    from fae.distributed import is_main

    cfg = stage.config.eval
    label = "II" if stage.finetune else "Ib"
    decoders = {label: decoder}
    if stage.ib_decoder is not None:
        decoders = {"Ib": stage.ib_decoder, **decoders}
    if stage.eval_inputs is None:  # the frozen networks run over the held-out set only once
        stage.eval_inputs = held_out_inputs(stage.backbone, stage.eval_dataset(), cfg.batch_size, stage.fae)
    was_training = decoder.training
    decoder.eval()
    decoded = decode_inputs(decoders, stage.eval_inputs, cfg.batch_size)
    decoder.train(was_training)
    metrics = score_all(decoded, len(decoded["original"]) if cfg.rfid else 0)
    if is_main() and cfg.grid_images > 0:
        save_grid(decoded, run_dir / f"recon_{step:07d}.png", cfg.grid_images)
    return metrics
