"""The experiment's report: ``report.html`` (figures inlined) built from ``results.json`` alone.

Curves: FID and class accuracy vs generator steps, one line per arm with its sampling 95% interval
as an error bar at each checkpoint, its seed replicates as thin lines of the same colour and its
seed group's 95% interval as a wide translucent bar at the last step (the real-vs-real floor drawn
as a line of its own). Tables: the arms and what each changes, scores at every checkpoint, the seed
groups, the upstream stages' own metrics, timings, and last the paper's ordering vs ours with both
intervals of each arm and the interval that decided the verdict. Every number in a table is
:func:`fid_text` / :func:`pct_text` of a value in ``results.json``.

Results written before intervals existed (no ``fid_ci``, ``groups`` or ``intervals``) still render:
without error bars, each verdict as recorded and "decided by" the margin against the seed spread
the old rule used. :func:`claim_figure` (one claim's two arms with both intervals) is shared with
``fae experiment report`` (:mod:`fae.experiment.summary`).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from fae.images import image_grid, save_png
from fae.report import Report, figure_image, pyplot

# the metrics a verdict row or a curve can carry, in the order tables show them
METRIC_LABELS = {"fid": "FID (lower is better)", "class_accuracy": "class accuracy (pixel judge)",
                 "bits_per_dim": "bits/dim, test latents (lower is better)"}
INTERVAL_KINDS = {"sampling": "sampling", "seed": "seeds"}  # recorded key -> the word tables show


def fid_text(x: float) -> str:
    return f"{x:.2f}"


def pct_text(x: float) -> str:
    return f"{100 * x:.1f}%"


def bits_text(x: float) -> str:
    return f"{x:.3f}"


FORMATS: dict[str, Callable[[float], str]] = {"fid": fid_text, "class_accuracy": pct_text,
                                              "bits_per_dim": bits_text}


def interval_text(interval: Sequence[float] | None, fmt: Callable[[float], str]) -> str:
    """``[lo, hi]`` of a recorded interval; '' when none was recorded."""
    if not interval:
        return ""
    return f"[{fmt(interval[0])}, {fmt(interval[1])}]"


def point_text(point: dict[str, Any], metric: str) -> str:
    """A checkpoint's score with its sampling interval when recorded: ``112.25 [108.10, 116.30]``."""
    fmt = FORMATS[metric]
    return f"{fmt(point[metric])} {interval_text(point.get(f'{metric}_ci'), fmt)}".rstrip()


def side_intervals(entry: dict[str, Any], side: str) -> dict[str, list[float]]:
    """The recorded intervals of one arm ("better" or "worse") of a verdict entry: kind -> [lo, hi]
    (empty for results written before intervals; a kind with too few seeds is left out)."""
    recorded = (entry.get("intervals") or {}).get(side) or {}
    return {kind: recorded[kind] for kind in INTERVAL_KINDS if recorded.get(kind)}


def intervals_text(entry: dict[str, Any], side: str, metric: str) -> str:
    """``sampling [a, b]; seeds [c, d]`` of one arm of a verdict entry, '-' when none was recorded."""
    fmt = FORMATS[metric]
    parts = [f"{INTERVAL_KINDS[kind]} {interval_text(iv, fmt)}" for kind, iv in side_intervals(entry, side).items()]
    return "; ".join(parts) or "-"


def decided_by_text(entry: dict[str, Any], metric: str) -> str:
    """Which interval decided a verdict (as recorded); for results written before intervals, the
    margin and the seed spread the old rule compared."""
    if entry.get("decided_by"):
        return entry["decided_by"]
    if "spread" in entry:
        fmt = FORMATS[metric]
        margin, spread = abs(entry["margin"]), entry["spread"]
        return f"old rule: margin {fmt(margin)} {'beyond' if margin > spread else 'within'} seed spread {fmt(spread)}"
    return "-"


def verdict_metrics(row: dict[str, Any]) -> list[str]:
    """The metrics a verdict row judges, in table order."""
    return [m for m in METRIC_LABELS if isinstance(row.get(m), dict)]


def _arm_label(arm: dict[str, Any]) -> str:
    if arm.get("replicate_of"):
        return f"{arm['name']} (seed replicate of {arm['replicate_of']})"
    return arm["name"]


def group_stats(record: dict[str, Any], arm: str, metric: str) -> dict[str, Any]:
    """The seed group of base arm ``arm`` for ``metric`` ({"mean", "sd", "values", "interval"}), or
    {} when results.json has none (written before seed groups, or the metric is not grouped)."""
    return ((record.get("groups") or {}).get(arm) or {}).get(metric) or {}


def _interval_bar(ax, x: float, interval: Sequence[float], colour: str, **style: Any) -> None:
    """An interval [lo, hi] as a capped vertical bar at ``x``, drawn from its own ends (a bootstrap
    interval need not be centred on, or even contain, the point estimate)."""
    lo, hi = interval
    ax.errorbar([x], [(lo + hi) / 2], yerr=[[(hi - lo) / 2], [(hi - lo) / 2]], fmt="none", color=colour, **style)


def _draw_curve(ax, arm: dict[str, Any], metric: str, colour: str, dodge: float, thin: bool) -> bool:
    """One arm's curve (thin for a seed replicate) with its sampling interval at every checkpoint
    that recorded one; returns whether any interval was drawn."""
    steps = [p["step"] + dodge for p in arm["curve"]]
    ax.plot(steps, [p[metric] for p in arm["curve"]], color=colour, linewidth=0.6 if thin else 1.4,
            alpha=0.55 if thin else 1.0, label=None if thin else arm["name"],
            marker=None if thin else "o", markersize=3)
    drawn = False
    for x, point in zip(steps, arm["curve"]):
        if point.get(f"{metric}_ci"):
            _interval_bar(ax, x, point[f"{metric}_ci"], colour, capsize=2 if thin else 3,
                          linewidth=0.6 if thin else 1.0, alpha=0.55 if thin else 1.0)
            drawn = True
    return drawn


def _reference_lines(ax, record: dict[str, Any], metric: str) -> None:
    """The real-vs-real floor (FID; with its interval as a band when recorded) and the per-channel
    Gaussian bits/dim of each space."""
    if metric == "fid":
        floor = record["floor"]
        ax.axhline(floor["fid"], color="0.35", linestyle="--", linewidth=1.0,
                   label=f"real-vs-real floor (N = {floor['n']})")
        if floor.get("fid_ci"):
            ax.axhspan(*floor["fid_ci"], color="0.5", alpha=0.15)
    if metric == "bits_per_dim":
        refs = {a["gaussian_bits_per_dim"] for a in record["arms"].values() if "gaussian_bits_per_dim" in a}
        for ref in sorted(refs):
            ax.axhline(ref, color="0.35", linestyle=":", linewidth=1.0, label=f"per-channel Gaussian ({ref:.3f})")


def curve_figure(record: dict[str, Any], metric: str, folder: Path) -> Path:
    """``metric`` vs generator steps: one colour per base arm (its replicates thin, same colour),
    sampling intervals as error bars, the seed group's interval as a translucent bar at the last
    step; arms are dodged sideways a little so their bars do not hide each other."""
    arms = [a for a in record["arms"].values() if a["curve"] and all(metric in p for p in a["curve"])]
    bases = [a for a in arms if not a.get("replicate_of")]
    steps = sorted({p["step"] for a in arms for p in a["curve"]})
    width = (steps[-1] - steps[0]) if len(steps) > 1 else 1  # dodging is relative to the steps' span
    plt = pyplot()
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    fig, ax = plt.subplots(figsize=(5.6, 3.5), dpi=110)
    notes = set()
    for i, base in enumerate(bases):
        colour, dodge = colours[i % len(colours)], 0.012 * width * (i - (len(bases) - 1) / 2)
        if _draw_curve(ax, base, metric, colour, dodge, thin=False):
            notes.add("bars: sampling 95% CI")
        for replicate in (a for a in arms if a.get("replicate_of") == base["name"]):
            _draw_curve(ax, replicate, metric, colour, dodge, thin=True)
            notes.add("thin: seed replicates")
        group = group_stats(record, base["name"], metric).get("interval")
        if group:
            ax.vlines(base["curve"][-1]["step"] + dodge, *group, color=colour, linewidth=7, alpha=0.25)
            notes.add("wide bar: seed 95% CI")
    _reference_lines(ax, record, metric)
    ax.set_title(METRIC_LABELS[metric] + (f"\n{'; '.join(sorted(notes))}" if notes else ""), fontsize=8)
    ax.set_xlabel("generator steps")
    ax.set_ylabel(METRIC_LABELS[metric])
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[1]:
        ax.legend(fontsize=7)
    fig.tight_layout()
    return save_png(figure_image(fig), folder / "figures" / f"{metric}.png")


def claim_figure(record: dict[str, Any], row: dict[str, Any], path: Path) -> Path:
    """One claim "better beats worse": per metric, each arm's value (the seed mean where recorded)
    as a dot, its sampling interval as a capped bar, its seed interval as a wide translucent bar
    and its seeds' values as rings; the real-vs-real floor on the FID panel."""
    metrics = verdict_metrics(row)
    plt = pyplot()
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    fig, axes = plt.subplots(1, len(metrics), figsize=(2.7 * len(metrics), 2.7), dpi=110, squeeze=False)
    for ax, metric in zip(axes[0], metrics):
        entry = row[metric]
        for x, side in enumerate(("better", "worse")):
            colour, intervals = colours[x], side_intervals(entry, side)
            if "seed" in intervals:
                ax.vlines(x, *intervals["seed"], color=colour, linewidth=9, alpha=0.25)
            if "sampling" in intervals:
                _interval_bar(ax, x + 0.12, intervals["sampling"], colour, capsize=4, linewidth=1.2)
            values = group_stats(record, row[side], metric).get("values") or []
            ax.plot([x - 0.12] * len(values), values, "o", color=colour, markerfacecolor="none", markersize=4)
            ax.plot([x], [entry[side]], "o", color=colour, markersize=6)
        if metric == "fid":
            ax.axhline(record["floor"]["fid"], color="0.35", linestyle="--", linewidth=1.0)
        ax.set_xticks([0, 1], [row["better"], row["worse"]], fontsize=7)
        ax.set_xlim(-0.6, 1.6)
        ax.set_title(f"{METRIC_LABELS[metric].split(' (')[0]}: {entry['verdict']}", fontsize=8)
        ax.tick_params(axis="y", labelsize=7)
        ax.grid(alpha=0.3, axis="y")
    fig.suptitle(f"{record['experiment']}: {row['better']} beats {row['worse']}?", fontsize=9)
    fig.tight_layout()
    return save_png(figure_image(fig), path)


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


def has_likelihood(record: dict[str, Any]) -> bool:
    return any("bits_per_dim" in p for a in record["arms"].values() for p in a["curve"])


def has_intervals(record: dict[str, Any]) -> bool:
    """Whether results.json recorded intervals (checkpoints' ``*_ci`` or verdicts' ``intervals``)."""
    points = (p for a in record["arms"].values() for p in a["curve"])
    rows = (row[m] for row in record["verdicts"] for m in verdict_metrics(row))
    return any("fid_ci" in p or "class_accuracy_ci" in p for p in points) or any("intervals" in e for e in rows)


def scores_rows(record: dict[str, Any]) -> list[list[str]]:
    """Every checkpoint's scores, each with its sampling 95% interval when recorded."""
    bits = has_likelihood(record)
    ci = " [95% interval]" if has_intervals(record) else ""
    rows = [["arm", "generator step", f"FID{ci}", f"class accuracy{ci}"]
            + (["bits/dim (test latents)"] if bits else [])]
    for arm in record["arms"].values():
        rows += [[arm["name"], str(p["step"]), point_text(p, "fid"), point_text(p, "class_accuracy")]
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


def group_rows(record: dict[str, Any]) -> list[list[str]] | None:
    """Each seed group's final scores: mean ± sd, the Student-t 95% interval of the mean, the
    values; None for results written before seed groups."""
    groups = record.get("groups") or {}
    metrics = [m for m in METRIC_LABELS if any(m in g for g in groups.values())]
    if not metrics:
        return None
    rows = [["arm (seed group)", "seeds"]]
    for metric in metrics:
        name = METRIC_LABELS[metric].split(" (")[0]
        rows[0] += [f"{name} mean ± sd", f"{name} seed interval", f"{name} values"]
    for arm in groups:
        row = [arm, str(max(len(group_stats(record, arm, m).get("values") or []) for m in metrics))]
        for metric in metrics:
            g, fmt = group_stats(record, arm, metric), FORMATS[metric]
            row += [f"{fmt(g['mean'])} ± {fmt(g['sd'])}" if g.get("sd") is not None else
                    (fmt(g["mean"]) if "mean" in g else "-"),
                    interval_text(g.get("interval"), fmt) or "-",
                    ", ".join(fmt(v) for v in g.get("values") or []) or "-"]
        rows.append(row)
    return rows


def verdict_rows(record: dict[str, Any]) -> list[list[str]]:
    """One row per claim and metric: our values (seed means where recorded), the verdict, what
    decided it and each arm's sampling and seed intervals; last, the noise at this N."""
    rows = [["paper's ordering", "source", "metric", "ours (better vs worse)", "verdict", "decided by",
             "better arm: 95% intervals", "worse arm: 95% intervals"]]
    for v in record["verdicts"]:
        for metric in verdict_metrics(v):
            entry, fmt = v[metric], FORMATS[metric]
            rows.append([f"{v['better']} beats {v['worse']}", v["source"], METRIC_LABELS[metric].split(" (")[0],
                         f"{fmt(entry['better'])} vs {fmt(entry['worse'])}", entry["verdict"],
                         decided_by_text(entry, metric), intervals_text(entry, "better", metric),
                         intervals_text(entry, "worse", metric)])
    rows.append(noise_row(record))
    return rows


def noise_row(record: dict[str, Any]) -> list[str]:
    """The verdict table's last row: the real-vs-real floor (with its interval when recorded), the
    judge on real images, and the main arm's seed spread when results.json has it."""
    floor, spread = record["floor"], record.get("spread")
    floor_ci = interval_text(floor.get("fid_ci"), fid_text)
    fid = f"real-vs-real floor {fid_text(floor['fid'])} (N = {floor['n']}) {floor_ci}".rstrip()
    accuracy = f"judge on real images {pct_text(record['judge_real_accuracy'])}"
    seeds = ""
    if spread:
        seeds = f"seeds of {record['main']}: {', '.join(spread['arms'])}"
        fid += f"; seed spread {fid_text(spread['fid'])}"
        accuracy += f"; seed spread {pct_text(spread['class_accuracy'])}"
    return ["noise at this N", seeds, "", f"FID: {fid}", "", "", f"class accuracy: {accuracy}", ""]


VERDICT_RULE = ("Each arm's value is the mean over its seeds. A verdict is 'agrees' or 'disagrees' only when "
                "the two arms' sampling intervals (95%: bootstrap of the sample features for FID, the "
                "reference fixed; Wilson for class accuracy; each around the arm's own run, its first "
                "seed) and their seed intervals (95% Student t over the seeds) both separate; otherwise "
                "it is inside the noise. 'decided by' names the interval that decided.")
OLD_RULE = ("Recorded before intervals existed: a difference counted when it exceeded the main arm's "
            "seed-to-seed spread (the range over its seeds; one replicate), otherwise it was too noisy "
            "to tell. No intervals were recorded, so none are drawn.")


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
    report.add("Curves", "One line per arm; x: generator steps." + (
        " Error bars: the sampling 95% interval of each checkpoint; thin lines: seed replicates; wide "
        "translucent bar at the last step: the seed group's 95% interval." if has_intervals(record) else ""),
        figures=figures)
    if has_likelihood(record):
        report.add("Likelihood", "Exact bits per dimension of each flow checkpoint on the latents of "
                   f"{ev['likelihood_images']} held-out test images in the arm's own space (standardised with "
                   "the training statistics, noise-augmented as in training, conditioned on the true class). "
                   "Comparable along a curve; across spaces each latent is standardised per channel, so the "
                   "figure measures structure beyond a per-channel Gaussian (the flat line), not image quality.",
                   figures=[curve_figure(record, "bits_per_dim", folder)])
    report.add("Arms", tables=[("what each arm changes (from results.json's config diff)", arms_rows(record))])
    report.add("Scores at every checkpoint", tables=[("FID and class accuracy", scores_rows(record))])
    groups = group_rows(record)
    if groups:
        report.add("Seed groups", tables=[("each compared arm over its seeds, at the last checkpoint", groups)])
    stages = stage_rows(record)
    if stages:
        report.add("Upstream stages", tables=[("each arm's stage evaluations", stages)])
    grid = grid_figure(record, folder)
    if grid is not None:
        report.add("Samples at the last checkpoint", "One row per arm, classes left to right.", figures=[grid])
    report.add("Time per step", tables=[("wall-clock and CPU seconds; a stage shared with an earlier arm "
                                         "shows as skipped", timing_rows(record))])
    claims = [claim_figure(record, row, folder / "figures" / f"claim-{i + 1}.png")
              for i, row in enumerate(record["verdicts"])] if has_intervals(record) else []
    report.add("Paper's ordering vs ours", VERDICT_RULE if claims else OLD_RULE, figures=claims,
               tables=[("verdicts at the last checkpoint", verdict_rows(record))])
    shown = {k: record[k] for k in ("floor", "spread", "groups", "verdicts") if k in record}
    report.add("results.json", json.dumps(shown, indent=1), code=True)
    return report.write(folder / "report.html")
