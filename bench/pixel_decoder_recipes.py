"""Which pixel-decoder loss recipe reaches the lower rFID at equal steps (issue 30, item 4)?

    .venv/bin/python bench/pixel_decoder_recipes.py --run runs/demo/pixel_decoder_ib [--images 1000]

``--run`` is a finished stage-Ib run folder (the demo's): its resolved ``config.yaml`` is the
baseline recipe (the demo's: L1 + perceptual 1.0 + hinge GAN 0.1 x the adaptive weight) and its
export is that recipe's decoder. The other recipe is trained here from the same config, seed,
data, steps and token cache with only the loss changed to TiTok's released stage-2 recipe (L2,
perceptual 0.1, a fixed GAN weight 0.01, LeCam 1e-3; the GAN starts at the run's own
``gan_start_step``, the perceptual network stays the run's). Both decoders then paint the first
``--images`` test images from their true backbone tokens; the table gives PSNR, SSIM and rFID
against the originals with a 95% bootstrap interval (decodings resampled, the originals'
statistics fixed: ``FIDScorer.fid_interval``). The recipes differ only when
their intervals separate. Writes ``recipes.json`` / ``recipes.md`` in ``--out``.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from fae.autoencoder.pixel_decoder import PixelDecoder
from fae.backbones import BackboneConfig, TokenCache
from fae.config import read_yaml
from fae.data.datasets import DataConfig, build_dataset
from fae.evaluation.recon import match_reference
from fae.evaluation.scorer import FIDScorer
from fae.images import quantize
from fae.io import atomic_save_json
from fae.training.engine import train
from fae.training.stages.pixel_decoder_heldout import HeldOut
from fae.training.stages.registry import load_stage

TITOK = ["loss.l1_weight=0.0", "loss.l2_weight=1.0", "loss.perceptual_weight=0.1", "loss.gan_weight=0.01",
         "loss.adaptive_gan_weight=false", "loss.lecam_weight=0.001", "loss.lecam_ema_decay=0.999"]


def train_titok(run: Path, out: Path) -> Path:
    """The TiTok-recipe decoder trained from ``run``'s resolved config (skipped when exported)."""
    folder = out / "titok"
    if (folder / "export" / "config.json").is_file():
        print(f"[skip] {folder / 'export'} exists", flush=True)
        return folder / "export"
    overrides = [f"train.run_dir={folder}", *TITOK]
    print(f"[train] stage Ib from {run / 'config.yaml'} with {' '.join(TITOK)}", flush=True)
    return Path(train(load_stage("pixel-decoder", str(run / "config.yaml"), overrides))["export"])


def rfid_with_interval(scorer: FIDScorer, images: torch.Tensor) -> dict[str, float | list]:
    """rFID of decodings (float [N, C, H, W] in [0, 1]) against the scorer's reference (the originals),
    and its bootstrap interval (the originals' statistics fixed), from one Inception pass."""
    features = scorer.features(quantize(images), desc="inception (decodings)")
    return {"rfid": scorer.fid(features, reference_first=True), "rfid_ci": list(scorer.fid_interval(features))}


def table(rows: dict[str, dict], images: int) -> str:
    lines = [f"| recipe | PSNR (dB) | SSIM | rFID ({images} test images) [95% bootstrap] |", "|---|---|---|---|"]
    for name, m in rows.items():
        lo, hi = m["rfid_ci"]
        lines.append(f"| {name} | {m['psnr']:.2f} | {m['ssim']:.4f} | {m['rfid']:.2f} [{lo:.2f}, {hi:.2f}] |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", required=True, help="a finished stage-Ib run folder (the baseline recipe)")
    parser.add_argument("--images", type=int, default=1000, help="test images decoded and scored")
    parser.add_argument("--out", default=None, help="output folder (default: RUN/../pixel_decoder_recipes)")
    args = parser.parse_args(argv)
    run = Path(args.run)
    out = Path(args.out) if args.out else run.parent / "pixel_decoder_recipes"
    base = read_yaml(run / "config.yaml")
    start = time.perf_counter()
    titok = train_titok(run, out)
    train_s = time.perf_counter() - start

    backbone = BackboneConfig(base["backbone"]["name"], base["backbone"]["resolution"]).load()
    data = DataConfig(name=base["data"]["name"], root=base["data"].get("root"), split="test", limit=args.images)
    tokens, _ = TokenCache(Path(base["token_cache_dir"]), backbone).tokens(data)
    held_out = HeldOut(build_dataset(data), tokens, None, batch_size=100)
    decoders = {"baseline (L1, perceptual 1.0, adaptive GAN 0.1)": PixelDecoder.from_pretrained(run / "export"),
                "TiTok (L2, perceptual 0.1, fixed GAN 0.01, LeCam 1e-3)": PixelDecoder.from_pretrained(titok)}
    decoded = held_out.decode({name: d.eval() for name, d in decoders.items()})
    scorer = FIDScorer(batch_size=100)
    originals = next(iter(decoded.values()))
    ref = scorer.features(quantize(match_reference(held_out.images, originals)), desc="inception (originals)")
    scorer.use_reference(ref)
    rows = {}
    scores = held_out.scores(decoded, rfid=False)
    for key, images in decoded.items():
        name = key.rsplit("/", 1)[0]
        rows[name] = {"psnr": scores[f"{key}/psnr"], "ssim": scores[f"{key}/ssim"],
                      **rfid_with_interval(scorer, images)}
    (lo_a, hi_a), (lo_b, hi_b) = (m["rfid_ci"] for m in rows.values())
    separate = hi_a < lo_b or hi_b < lo_a
    steps = base["train"]["steps"]
    verdict = (f"at {steps} steps: " + ("the intervals separate: " + min(rows, key=lambda n: rows[n]["rfid"])
                                        + " reaches the lower rFID" if separate else "inside the noise (intervals overlap)"))
    out.mkdir(parents=True, exist_ok=True)
    text = table(rows, args.images) + f"\n\n{verdict}\n"
    (out / "recipes.md").write_text(text)
    atomic_save_json({"steps": steps, "images": args.images, "rows": rows, "verdict": verdict,
                      "titok_overrides": TITOK, "train_s": round(train_s, 1),
                      "total_s": round(time.perf_counter() - start, 1)}, out / "recipes.json")
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
