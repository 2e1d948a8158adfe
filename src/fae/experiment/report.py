"""The experiment's report: ``report.html`` (figures inlined) built from ``results.json`` alone.

Curves: FID and class accuracy vs generator steps, one line per arm (the real-vs-real floor drawn
as a line of its own). Tables: the arms and what each changes, scores at every checkpoint, the
upstream stages' own metrics, timings, and last the paper's ordering vs ours. Every number in a
table is :func:`fid_text` / :func:`pct_text` of a value in ``results.json``.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from fae.images import image_grid, save_png
from fae.report import Report, line_plot


def fid_text(x: float) -> str:
    return f"{x:.2f}"


def pct_text(x: float) -> str:
    return f"{100 * x:.1f}%"


def _arm_label(arm: dict[str, Any]) -> str:
    if arm.get("replicate_of"):
        return f"{arm['name']} (seed replicate of {arm['replicate_of']})"
    return arm["name"]


def curve_figure(record: dict[str, Any], metric: str, folder: Path) -> Path:
    series = {a["name"]: ([p["step"] for p in a["curve"]], [p[metric] for p in a["curve"]])
              for a in record["arms"].values() if all(metric in p for p in a["curve"])}
    if metric == "fid":
        steps = sorted({s for xs, _ in series.values() for s in xs})
        series[f"real-vs-real floor (N = {record['floor']['n']})"] = (steps, [record["floor"]["fid"]] * len(steps))
    if metric == "bits_per_dim":
        refs = {a["gaussian_bits_per_dim"] for a in record["arms"].values() if "gaussian_bits_per_dim" in a}
        steps = sorted({s for xs, _ in series.values() for s in xs})
        for ref in sorted(refs):
            series[f"per-channel Gaussian ({ref:.3f})"] = (steps, [ref] * len(steps))
    label = {"fid": "FID (lower is better)", "class_accuracy": "class accuracy (pixel judge)",
             "bits_per_dim": "bits/dim, test latents (lower is better)"}[metric]
    plot = line_plot(series, label, xlabel="generator steps", ylabel=label, logy=False)
    return save_png(plot, folder / "figures" / f"{metric}.png")


def grid_figure(record: dict[str, Any], folder: Path) -> Path | None:
    """Final-step samples: one row per arm, classes in order."""
    rows, names = [], []
    for arm in record["arms"].values():
        path = folder / arm["name"] / "eval" / f"step-{arm['final']['step']:08d}.pt"
        if not path.is_file():
            continue
        saved = torch.load(path, weights_only=True)
        order = torch.argsort(saved["labels"], stable=True)
        rows.append(saved["images"][order])
        names.append(arm["name"])
    if not rows:
        return None
    per_row = min(len(r) for r in rows)
    images = torch.cat([r[:per_row] for r in rows])
    return save_png(image_grid(images, ncol=per_row, scale=2, row_labels=names, label_width=120),
                    folder / "figures" / "samples.png")


def arms_rows(record: dict[str, Any]) -> list[list[str]]:
    rows = [["arm", "differs from the main arm in", "latent (c x h x w)", "generator loss (first -> last)",
             "wall (s)", "status"]]
    for arm in record["arms"].values():
        diff = "; ".join(f"{k}: {v[0]} -> {v[1]}" for k, v in arm["diff"].items()) or "(main arm)"
        loss = arm["generator_loss"]
        loss_text = f"{loss['first']:.4f} -> {loss['last']:.4f}" if loss else "-"
        rows.append([_arm_label(arm), diff, "x".join(map(str, arm["latent_shape"])), loss_text,
                     f"{arm['wall_s']:.1f}", record["status"].get(arm["name"], "")])
    return rows


def bits_text(x: float) -> str:
    return f"{x:.3f}"


def has_likelihood(record: dict[str, Any]) -> bool:
    return any("bits_per_dim" in p for a in record["arms"].values() for p in a["curve"])


def scores_rows(record: dict[str, Any]) -> list[list[str]]:
    bits = has_likelihood(record)
    rows = [["arm", "generator step", "FID", "class accuracy"] + (["bits/dim (test latents)"] if bits else [])]
    for arm in record["arms"].values():
        rows += [[arm["name"], str(p["step"]), fid_text(p["fid"]), pct_text(p["class_accuracy"])]
                 + ([bits_text(p["bits_per_dim"]) if "bits_per_dim" in p else "-"] if bits else [])
                 for p in arm["curve"]]
    return rows


def stage_rows(record: dict[str, Any]) -> list[list[str]] | None:
    """The FAE's feature cosine and probe, and the pixel VAE's reconstruction, per arm."""
    keys = (("autoencoder", "cosine", "feature cosine", lambda x: f"{x:.4f}"),
            ("autoencoder", "probe_top1_raw", "probe: raw features", pct_text),
            ("autoencoder", "probe_top1_recon", "probe: FAE-reconstructed", pct_text),
            ("pixel_autoencoder", "psnr", "pixel VAE PSNR (dB)", lambda x: f"{x:.2f}"))
    used = [k for k in keys if any(k[1] in a["stage_metrics"].get(k[0], {}) for a in record["arms"].values())]
    if not used:
        return None
    rows = [["arm"] + [k[2] for k in used]]
    for arm in record["arms"].values():
        m = arm["stage_metrics"]
        rows.append([arm["name"]] + [fmt(m[s][key]) if key in m.get(s, {}) else "-" for s, key, _, fmt in used])
    return rows


def timing_rows(record: dict[str, Any]) -> list[list[str]]:
    rows = [["arm", "step", "status", "wall (s)", "CPU (s)"]]
    for arm in record["arms"].values():
        rows += [[arm["name"], t["step"], t["status"], f"{t['wall_s']:.1f}", f"{t['cpu_s']:.1f}"] for t in arm["timings"]]
    return rows


def verdict_rows(record: dict[str, Any]) -> list[list[str]]:
    spread, floor = record["spread"], record["floor"]
    rows = [["paper's ordering", "source", "FID ours (better vs worse)", "FID verdict",
             "class accuracy ours", "accuracy verdict"]]
    for v in record["verdicts"]:
        f, a = v["fid"], v["class_accuracy"]
        rows.append([f"{v['better']} beats {v['worse']}", v["source"],
                     f"{fid_text(f['better'])} vs {fid_text(f['worse'])}", f["verdict"],
                     f"{pct_text(a['better'])} vs {pct_text(a['worse'])}", a["verdict"]])
    rows.append(["noise at this N", f"seeds of {record['main']}: {', '.join(spread['arms'])}",
                 f"spread {fid_text(spread['fid'])}; real-vs-real floor {fid_text(floor['fid'])} (N = {floor['n']})",
                 "", f"spread {pct_text(spread['class_accuracy'])}; judge on real images "
                 f"{pct_text(record['judge_real_accuracy'])}", ""])
    return rows


def write_report(record: dict[str, Any], folder: Path) -> Path:
    """Figures under ``folder/figures`` and ``folder/report.html``; returns the HTML path."""
    ev = record["evaluation"]
    report = Report(record["title"] + (" (--quick)" if record["quick"] else ""),
                    intro=f"{record['question']} Every arm trains the same generator for the same steps "
                          f"(checkpoints {', '.join(map(str, ev['steps']))}) and differs from the main arm "
                          f"'{record['main']}' only in {', '.join(record['variable'])}. Scores: FID of "
                          f"{ev['fid_samples']} class-balanced samples against {ev['reference_images']} "
                          f"Fashion-MNIST test images (real-vs-real floor at the same N: "
                          f"{fid_text(record['floor']['fid'])}); class accuracy by the demo's pixel judge. "
                          f"Total time: {record['total_wall_s']:.0f} s.")
    figures = [curve_figure(record, "fid", folder), curve_figure(record, "class_accuracy", folder)]
    report.add("Curves", "One line per arm; x: generator steps.", figures=figures)
    if has_likelihood(record):
        report.add("Likelihood", "Exact bits per dimension of each flow checkpoint on the latents of "
                   f"{ev['likelihood_images']} held-out test images in the arm's own space (standardised with "
                   "the training statistics, noise-augmented as in training, conditioned on the true class). "
                   "Comparable along a curve; across spaces each latent is standardised per channel, so the "
                   "figure measures structure beyond a per-channel Gaussian (the flat line), not image quality.",
                   figures=[curve_figure(record, "bits_per_dim", folder)])
    report.add("Arms", tables=[("what each arm changes (from results.json's config diff)", arms_rows(record))])
    report.add("Scores at every checkpoint", tables=[("FID and class accuracy", scores_rows(record))])
    stages = stage_rows(record)
    if stages:
        report.add("Upstream stages", tables=[("each arm's stage evaluations", stages)])
    grid = grid_figure(record, folder)
    if grid is not None:
        report.add("Samples at the last checkpoint", "One row per arm, classes left to right.", figures=[grid])
    report.add("Time per step", tables=[("wall-clock and CPU seconds; a stage shared with an earlier arm "
                                         "shows as skipped", timing_rows(record))])
    report.add("Paper's ordering vs ours", "A difference counts when it exceeds the main arm's seed-to-seed "
               "spread; otherwise it is too noisy to tell at this N.",
               tables=[("verdicts at the last checkpoint", verdict_rows(record))])
    report.add("results.json", json.dumps({k: record[k] for k in ("floor", "spread", "verdicts")}, indent=1),
               code=True)
    return report.write(folder / "report.html")
