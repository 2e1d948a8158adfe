"""The demo's report: PNG figures under ``out/figures`` and one self-contained ``out/report.html``.

Figures: reconstructions (original | decoded from backbone features | decoded from FAE latents),
class-conditional samples (one row per class), CFG off vs on (same noise), and one loss-curve plot
per training stage (from its ``metrics.jsonl``), and ``out/summary.png`` (what each stage made of a few
test images, the samples, and the headline figures: the README's picture). Tables: metrics, the
targets the default run is held to, and the time each step took.
"""
from __future__ import annotations

import math
import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from fae.data.fashion_mnist import CLASS_NAMES
from fae.demo import __doc__ as demo_doc
from fae.demo.patches import add_patch_section
from fae.demo.t2i_report import add_t2i_section
from fae.images import image_grid, save_png, to_uint8_rgb
from fae.report import Report, figure_image, line_plot, pyplot
from fae.training.metrics_log import read_metrics

STAGES = (("autoencoder", "stage Ia: FAE (encoder + feature decoder)"),
          ("pixel_decoder_ib", "stage Ib: pixel decoder on noisy features"),
          ("pixel_decoder_ii", "stage II: pixel decoder on FAE features"),
          ("generator", "generator (flow matching on FAE latents)"))
PROBE_GAP_FLOOR = 0.02  # reconstructed-feature probe within 2 points of the raw-feature probe
CLASS_ACCURACY_FLOOR = 0.85  # share of samples assigned to their requested class
RECON_ACCURACY_FLOOR = 0.80  # share of decoded test reconstructions the pixel classifier recognises
PSNR_FLOOR = 18.0  # dB, test images decoded from FAE latents
FID_CEILING, FID_AT_N = 100.0, 500  # generation FID (CFG) at N samples
PHASE_NAMES = {"main": "training loss", "decoder": "pixel decoder",
               "generator": "pixel decoder",  # run folders written before the phase was renamed
               "discriminator": "discriminator (hinge)"}
PROBE_PROTOCOL = (
    "Linear probe, the paper's zero-shot protocol (Table 1: DINOv2's released ImageNet head on raw vs "
    "FAE-reconstructed features): one linear head is trained on the raw pooled backbone tokens of the "
    "training images, then applied unchanged to the raw and to the FAE-reconstructed tokens of the "
    "test images; it never sees a reconstruction. Its input is the mean of the patch tokens "
    "(EfficientNet has no CLS token; the DINOv2 heads take CLS + mean of the patches). The head is "
    "saved as eval/probe_head.pth in the released head format, and `fae eval probe --head FILE --fae DIR` "
    "scores any head this way. The latent probe has its own head, trained on pooled latents.")
SCALE = 3  # 28 px Fashion-MNIST tiles drawn at 84 px
SUMMARY_PER_CLASS = 6  # samples per class in summary.png
SAMPLE_SCALE = 4  # the sample grid, large enough to judge: 112 px tiles (nearest neighbour)


# ------------------------------------------------------------------------------------------ figures


def reconstruction_figure(images: dict[str, torch.Tensor]):
    """One row per test image: what each stage made of it (stage Ia: its latent, as the leading
    principal components in RGB; Ib: decoded from the backbone features; II: decoded from the
    latent), then a generated sample of the same class."""
    samples = torch.stack([images["guided"][int(c)] for c in images["labels"]])  # sample i asked for class i % 10
    columns = [images["original"], images["latent_pca"], images["from_features"], images["from_latents"], samples]
    tiles = torch.stack([to_uint8_rgb(c) for c in columns], dim=1).flatten(0, 1)  # [rows * 5, 3, H, W]
    return image_grid(tiles, ncol=len(columns), scale=SCALE, row_labels=[CLASS_NAMES[int(c)] for c in images["labels"]],
                      col_labels=["original", "Ia: latent", "Ib: features", "II: latent", "generated"], label_width=90)


def _by_class(samples: torch.Tensor, per_class: int) -> torch.Tensor:
    """Samples ordered by class (sample i asked for class i % 10): [10 * per_class, C, H, W]."""
    rows = [samples[c::len(CLASS_NAMES)][:per_class] for c in range(len(CLASS_NAMES))]
    return torch.cat(rows)


def samples_figure(samples: torch.Tensor, per_class: int):
    per_class = min(per_class, len(samples) // len(CLASS_NAMES))
    return image_grid(_by_class(samples, per_class), ncol=per_class, scale=SAMPLE_SCALE, row_labels=CLASS_NAMES)


def cfg_figure(plain: torch.Tensor, guided: torch.Tensor, per_side: int = 4):
    """Each row one class: ``per_side`` samples without CFG, then the same noise with CFG."""
    per_side = min(per_side, len(plain) // len(CLASS_NAMES), len(guided) // len(CLASS_NAMES))
    off, on = _by_class(plain, per_side), _by_class(guided, per_side)
    rows = torch.cat([off.view(len(CLASS_NAMES), per_side, *off.shape[1:]),
                      on.view(len(CLASS_NAMES), per_side, *on.shape[1:])], dim=1).flatten(0, 1)
    labels = [f"off {i}" for i in range(per_side)] + [f"CFG {i}" for i in range(per_side)]
    return image_grid(rows, ncol=2 * per_side, scale=SCALE, row_labels=CLASS_NAMES, col_labels=labels)


def loss_figure(run_dir: Path, title: str):
    """Training losses of every phase (and the held-out eval loss when logged); None if no log."""
    rows = read_metrics(run_dir)
    series: dict[str, tuple[list[float], list[float]]] = {}
    for row in rows:
        kind = row.get("kind", "train")
        for key, value in row.items():
            wanted = key.endswith("/loss") if kind == "train" else key in ("loss", "fixed_noise_loss")
            if wanted and isinstance(value, (int, float)) and math.isfinite(value):
                name = PHASE_NAMES.get(key[:-len("/loss")], key) if kind == "train" else f"eval {key}"
                xs, ys = series.setdefault(name, ([], []))
                xs.append(row["step"])
                ys.append(float(value))
    if not series:
        return None
    return line_plot(series, title)


def _headline(m: dict[str, Any]) -> str:
    """The figures a reader of the summary picture looks for, in two lines."""
    return (f"feature cosine {m['feature_cosine']:.3f}; linear probe raw / reconstructed / latents "
            f"{_pct(m['probe_raw'])} / {_pct(m['probe_reconstructed'])} / {_pct(m['probe_latent'])}; "
            f"PSNR from latents {m['psnr_from_latents']:.1f} dB\n"
            f"FID (CFG, N = {m['fid_samples']}) {m['fid_cfg']:.1f}{_interval(m, 'fid_cfg')} vs real-vs-real floor "
            f"{m.get('fid_real_floor', float('nan')):.1f}; rFID {m['rfid']:.1f}; requested class "
            f"{_pct(m['class_accuracy_cfg'])}{_interval(m, 'class_accuracy_cfg', 100)} (pixel judge); [95% interval]")


def summary_figure(reconstructions: Image.Image, samples: Image.Image, metrics: dict[str, Any], title: str):
    """One picture of a run: what each stage made of test images beside the samples, headline
    figures underneath (``summary.png`` beside the report; the README's picture is this file of a
    default run). Laid out in pixels: a title row, the two panels top-aligned, a text band."""
    plt = pyplot()
    head, band, gap = 28, 80, 20  # px: panel titles, headline text, space between the panels
    width = reconstructions.width + gap + samples.width
    height = head + max(reconstructions.height, samples.height) + band
    fig = plt.figure(figsize=(width / 100, height / 100), dpi=100)
    left = 0
    for image, name in ((reconstructions, "each stage on test images"), (samples, "class-conditional samples (CFG)")):
        ax = fig.add_axes((left / width, 1 - (head + image.height) / height, image.width / width, image.height / height))
        ax.imshow(np.asarray(image), interpolation="nearest")
        ax.set_title(name, fontsize=10)
        ax.axis("off")
        left += image.width + gap
    text_top = 1 - (height - band + 10) / height
    fig.text(0.01, text_top, title, fontsize=10, weight="bold", va="top")
    fig.text(0.01, text_top - 22 / height, _headline(metrics), fontsize=8.5, va="top", linespacing=1.5)
    return figure_image(fig)


def write_figures(out: Path, metrics: dict[str, Any] | None = None, title: str = "FAE demo") -> dict[str, Path]:
    """Every PNG figure, from ``out/eval/images.pt`` and the stages' metrics logs (the summary
    picture too when ``metrics`` are given)."""
    images = torch.load(out / "eval" / "images.pt", weights_only=True)
    folder = out / "figures"
    per_class = len(images["guided"]) // len(CLASS_NAMES)
    reconstructions = reconstruction_figure(images)
    samples = samples_figure(images["guided"], per_class)
    figures = {"reconstructions": save_png(reconstructions, folder / "reconstructions.png"),
               "samples": save_png(samples, folder / "samples.png"),
               "cfg": save_png(cfg_figure(images["plain"], images["guided"]), folder / "cfg_off_vs_on.png")}
    if metrics is not None:
        few = samples_figure(images["guided"], min(per_class, SUMMARY_PER_CLASS))
        figures["summary"] = save_png(summary_figure(reconstructions, few, metrics, title),
                                      out / "summary.png")  # beside report.html, not inlined in it
    for name, title in STAGES:
        plot = loss_figure(out / name, title)
        if plot is not None:
            figures[f"loss_{name}"] = save_png(plot, folder / f"loss_{name}.png")
    return figures


# ------------------------------------------------------------------------------------------ tables


def _pct(x: float) -> str:
    return f"{100 * x:.2f}%"


def _interval(m: dict[str, Any], key: str, scale: float = 1.0, digits: int = 1) -> str:
    """`` [lo, hi]``: the 95% interval ``m[key + "_ci"]`` (times ``scale``), or "" for metrics
    written before the demo measured intervals."""
    if f"{key}_ci" not in m:
        return ""
    lo, hi = m[f"{key}_ci"]
    return f" [{scale * lo:.{digits}f}, {scale * hi:.{digits}f}]"


def metrics_rows(m: dict[str, Any]) -> list[list[str]]:
    n, n_fid = m["test_images"], m["fid_samples"]
    ref = f"vs {n} test images"
    rows = [["metric", "value", "how"],
            ["feature cosine (x_hat vs x)", f"{m['feature_cosine']:.4f}", f"{n} test images"],
            ["feature relative L2", f"{m['feature_rel_l2']:.4f}", f"{n} test images"],
            ["linear probe: raw backbone features", _pct(m["probe_raw"]),
             f"head trained on {m['probe_train_images']} raw train images"],
            ["linear probe: FAE-reconstructed features", _pct(m["probe_reconstructed"]),
             "the raw head unchanged (zero-shot, as paper Table 1)"],
            ["linear probe: FAE latents (pooled)", _pct(m["probe_latent"]), "own head on train latents"],
            ["PSNR decoded from features (Ib)", f"{m['psnr_from_features']:.2f} dB", f"{n} test images"],
            ["SSIM decoded from features (Ib)", f"{m['ssim_from_features']:.4f}", f"{n} test images"],
            ["PSNR decoded from latents (FAE)", f"{m['psnr_from_latents']:.2f} dB", f"{n} test images"],
            ["SSIM decoded from latents (FAE)", f"{m['ssim_from_latents']:.4f}", f"{n} test images"]]
    if "fid_real_floor" in m:
        rows.append(["FID floor: other real test images", f"{m['fid_real_floor']:.2f}", f"{n} {ref}"])
    rows += [["rFID (FAE reconstructions)", f"{m['rfid']:.2f}", f"{n} {ref}"],
             ["generation FID, CFG", f"{m['fid_cfg']:.2f}{_interval(m, 'fid_cfg', digits=2)}",
              f"{n_fid} samples {ref}; [bootstrap 95%: samples resampled]"]]
    if "fid_no_cfg" in m:
        rows.append(["generation FID, no CFG", f"{m['fid_no_cfg']:.2f}{_interval(m, 'fid_no_cfg', digits=2)}",
                     f"{n_fid} samples {ref}; [bootstrap 95%]"])
    judge = "pixel classifier"
    if "classifier_accuracy_real" in m:
        rows.append(["real test images assigned to their class (the judge's ceiling)",
                     _pct(m["classifier_accuracy_real"]), f"{n} test images; {judge}"])
    if "class_accuracy_reconstructions_ib" in m:
        rows.append(["test images decoded from features (Ib) assigned to their class",
                     _pct(m["class_accuracy_reconstructions_ib"]), f"{n} test images; {judge}"])
    if "class_accuracy_reconstructions" in m:
        rows.append(["test images decoded from latents assigned to their class",
                     _pct(m["class_accuracy_reconstructions"]), f"{n} test images; {judge}"])
    rows += [["samples assigned to requested class, CFG",
              _pct(m["class_accuracy_cfg"]) + _interval(m, "class_accuracy_cfg", 100, 2),
              f"{n_fid} samples; {judge}; [Wilson 95%]"],
             ["samples assigned to requested class, no CFG",
              _pct(m["class_accuracy_no_cfg"]) + _interval(m, "class_accuracy_no_cfg", 100, 2),
              f"{m['class_accuracy_samples_no_cfg']} samples; {judge}"]]
    if "latent_class_accuracy_cfg" in m:
        rows.append(["generated latents assigned to requested class, CFG",
                     _pct(m["latent_class_accuracy_cfg"]), f"{n_fid} samples; latent head"])
        rows.append(["generated latents assigned to requested class, no CFG",
                     _pct(m["latent_class_accuracy_no_cfg"]),
                     f"{m['class_accuracy_samples_no_cfg']} samples; latent head"])
    rows.append(["sampler", m["cfg"], ""])
    return rows


def _verdict(ok: bool, miss: str) -> str:
    return "met" if ok else f"missed by {miss}"


def _at_least(label: str, value: float, floor: float) -> list[str]:
    return [label, _pct(value), _verdict(value >= floor, f"{100 * (floor - value):.2f} points")]


def floor_rows(m: dict[str, Any]) -> list[list[str]]:
    """The targets the default demo is held to, each with its verdict."""
    gap = m["probe_raw"] - m["probe_reconstructed"]
    rows = [["target", "measured", "verdict"],
            ["probe on reconstructed features within 2 points of raw", f"gap {100 * gap:.2f} points",
             _verdict(gap <= PROBE_GAP_FLOOR, f"{100 * (gap - PROBE_GAP_FLOOR):.2f} points")]]
    if "class_accuracy_reconstructions" in m:
        rows.append(_at_least(">= 80% of decoded test reconstructions recognised (pixel classifier)",
                              m["class_accuracy_reconstructions"], RECON_ACCURACY_FLOOR))
    rows.append(_at_least(">= 85% of samples recognised as their class (CFG; pixel classifier)",
                          m["class_accuracy_cfg"], CLASS_ACCURACY_FLOOR))
    if "latent_class_accuracy_cfg" in m:
        rows.append(_at_least(">= 85% of generated latents assigned to their class (latent head)",
                              m["latent_class_accuracy_cfg"], CLASS_ACCURACY_FLOOR))
    psnr = m["psnr_from_latents"]
    rows.append([f">= {PSNR_FLOOR:g} dB PSNR decoded from latents", f"{psnr:.2f} dB",
                 _verdict(psnr >= PSNR_FLOOR, f"{PSNR_FLOOR - psnr:.2f} dB")])
    fid = m["fid_cfg"]
    floor = f"; real-vs-real floor {m['fid_real_floor']:.2f}" if "fid_real_floor" in m else ""
    rows.append([f"generation FID <= {FID_CEILING:g} at N = {FID_AT_N}", f"{fid:.2f} (N = {m['fid_samples']}{floor})",
                 _verdict(fid <= FID_CEILING and m["fid_samples"] >= FID_AT_N,
                          f"{fid - FID_CEILING:.2f}" if fid > FID_CEILING else f"N < {FID_AT_N}")])
    return rows


def timing_rows(timings: list[dict[str, Any]], total: float) -> list[list[str]]:
    rows = [["step", "status", "wall (s)", "CPU (s)"]]
    rows += [[t["step"], t["status"], f"{t['wall_s']:.1f}", f"{t['cpu_s']:.1f}"] for t in timings]
    rows.append(["total", "", f"{total:.1f}", f"{sum(t['cpu_s'] for t in timings):.1f}"])
    return rows


# ------------------------------------------------------------------------------------------ report


def write_report(cfg, out: Path, metrics: dict[str, Any], timings: list[dict[str, Any]], total: float,
                 quick: bool) -> Path:
    """Figures + ``report.html`` (images inlined); returns the HTML path."""
    title = "FAE demo on Fashion-MNIST" + (" (--quick)" if quick else "")
    figures = write_figures(out, metrics, title)
    report = Report(title,
                    intro=f"EfficientNet-Lite0 (ImageNet weights) at {cfg.backbone.resolution} px -> "
                          f"FAE latents -> pixel decoder; class-conditional flow-matching generator on the "
                          f"latents. Every stage trained on this machine's CPU in {total:.0f} s in all.")
    report.add("Targets", "What the default run is held to (a `--quick` run or smaller budgets are expected "
               "to miss some of them).", tables=[("targets of the default run", floor_rows(metrics))])
    report.add("Metrics", PROBE_PROTOCOL, tables=[("Fashion-MNIST test split", metrics_rows(metrics))])
    report.add("What each stage produced", "Test images; stage Ia: the FAE latent "
               "drawn as its three leading principal components in RGB; stage Ib: decoded from the raw "
               "backbone features; stage II: decoded from the FAE latent (encode -> feature decoder -> "
               "stage-II decoder); generator: a sample asked for the same class (with CFG).",
               figures=[figures["reconstructions"]])
    add_patch_section(report, out, metrics)
    report.add("Class-conditional samples", f"One row per class; sampler: {metrics['cfg']}.",
               figures=[figures["samples"]])
    report.add("CFG off vs on", "The same noise per column pair: without guidance (left half), with "
               "guidance (right half).", figures=[figures["cfg"]])
    if "t2i" in metrics:
        add_t2i_section(report, out, metrics, metrics["t2i"], cfg.eval.grid_per_class,
                        loss_figure(out / "t2i" / "generator", "text-to-image MMDiT (flow matching on FAE latents)"))
    report.add("Loss curves", "Per training stage, from each run folder's metrics.jsonl.",
               figures=[p for k, p in figures.items() if k.startswith("loss_")])
    report.add("Time per step", tables=[("wall-clock and CPU seconds (CPU counts every core)",
                                         timing_rows(timings, total))])
    snippet = textwrap.dedent(demo_doc.split("::", 1)[1]).strip("\n")
    report.add("Load the exports", snippet.replace("runs/demo", str(out)), code=True)
    return report.write(out / "report.html")
