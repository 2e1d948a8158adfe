"""``fae experiment report [--root RUNS] [--out DIR]``: every experiment's verdicts on one page.

Reads ``ROOT/NAME/results.json`` of each experiment under the root (a run root such as
``runs/experiments``, or the kept ``docs/experiments``) and writes, atomically, into ``DIR``:

- ``summary.html``: the verdict table (one row per claim and metric: the paper's source, our values
  with their sampling and seed 95% intervals, the verdict and the interval that decided it, the
  real-vs-real floor at that experiment's N), then per experiment one small figure per claim (the
  two arms' values with both intervals drawn as error bars, :func:`fae.experiment.report.claim_figure`)
  and the arms ranked by their final scores;
- ``summary.md``: the same table as markdown, ready to paste into the README.

Only names relative to the root appear in either file (``NAME/results.json``), never a machine's
path. Results written before intervals existed render with their recorded verdicts and no bars.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from fae.errors import ConfigError
from fae.experiment.report import (FORMATS, METRIC_LABELS, OLD_RULE, VERDICT_RULE, claim_figure, decided_by_text,
                                   fid_text, group_stats, has_intervals, interval_text, intervals_text, pct_text,
                                   verdict_metrics)
from fae.experiment.verdict import METRICS
from fae.io import atomic_write
from fae.report import Report

SUMMARY_HTML, SUMMARY_MD, FIGURES = "summary.html", "summary.md", "summary-figures"
COLUMNS = ["experiment", "claim", "paper", "ours: better vs worse (95% intervals)", "verdict", "decided by"]


def gather(root: Path) -> list[tuple[str, dict[str, Any]]]:
    """(NAME, record) of every ``root/NAME/results.json``, by name; a user error when there is
    none or one is not an experiment's results."""
    if not root.is_dir():
        raise ConfigError(f"--root {root} is not a folder; run `fae experiment NAME` first or pass "
                          "--root docs/experiments")
    found = []
    for path in sorted(root.glob("*/results.json")):
        name = path.parent.name
        try:
            record = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ConfigError(f"{name}/results.json under --root is not JSON ({e}); rerun `fae experiment {name}`")
        if not isinstance(record, dict) or not {"verdicts", "arms", "floor"} <= record.keys():
            raise ConfigError(f"{name}/results.json under --root is not an experiment's results (no verdicts, "
                              f"arms or floor); rerun `fae experiment {name}` or move the file away")
        found.append((name, record))
    if not found:
        raise ConfigError(f"--root {root} holds no NAME/results.json; run `fae experiment NAME` first or pass "
                          "--root docs/experiments")
    return found


def experiment_label(name: str, record: dict[str, Any]) -> str:
    return name + (" (--quick)" if record.get("quick") else "")


def side_text(entry: dict[str, Any], side: str, metric: str) -> str:
    """One arm's value with its intervals: ``112.25 (sampling [108.10, 116.30]; seeds [...])``."""
    intervals = intervals_text(entry, side, metric)
    return FORMATS[metric](entry[side]) + ("" if intervals == "-" else f" ({intervals})")


def claim_rows(name: str, record: dict[str, Any]) -> list[list[str]]:
    """The summary table's rows of one experiment (columns :data:`COLUMNS`): one per claim and metric."""
    rows = []
    for row in record["verdicts"]:
        for metric in verdict_metrics(row):
            entry = row[metric]
            rows.append([experiment_label(name, record),
                         f"{row['better']} beats {row['worse']} ({METRIC_LABELS[metric].split(' (')[0]})",
                         row.get("source", ""),
                         f"{side_text(entry, 'better', metric)} vs {side_text(entry, 'worse', metric)}",
                         entry["verdict"], decided_by_text(entry, metric)])
    return rows


def floor_text(record: dict[str, Any]) -> str:
    """The real-vs-real FID floor at the experiment's N, with its interval when recorded."""
    floor = record["floor"]
    ci = interval_text(floor.get("fid_ci"), fid_text)
    return f"{fid_text(floor['fid'])}" + (f" {ci}" if ci else "") + f" (N = {floor['n']})"


def _markdown_cell(text: str) -> str:
    """A table cell: pipes escaped, line breaks flattened, so every row keeps its columns."""
    return " ".join(str(text).split()).replace("|", "\\|")


def markdown(experiments: list[tuple[str, dict[str, Any]]], claims: list[list[list[str]]]) -> str:
    """``summary.md``: the verdict table (``claims``: each experiment's :func:`claim_rows`), then each
    experiment's floor and the rule that judged it."""
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for rows in claims:
        lines += ["| " + " | ".join(_markdown_cell(c) for c in row) + " |" for row in rows]
    floors = "; ".join(f"{experiment_label(n, r)} {floor_text(r)}" for n, r in experiments)
    lines += ["", f"Real-vs-real FID floor at each experiment's N: {floors}."]
    ruled = [experiment_label(n, r) for n, r in experiments if has_intervals(r)]
    old = [experiment_label(n, r) for n, r in experiments if not has_intervals(r)]
    if ruled:
        lines += ["", f"{', '.join(ruled)}: {VERDICT_RULE}"]
    if old:
        lines += ["", f"{', '.join(old)}: {OLD_RULE}"]
    return "\n".join(lines) + "\n"


def ranking_text(record: dict[str, Any], metric: str) -> str:
    """The base arms best first by their final ``metric`` (the seed mean where recorded)."""
    bases = [a for a in record["arms"].values() if not a.get("replicate_of") and metric in a["final"]]
    value = {a["name"]: group_stats(record, a["name"], metric).get("mean", a["final"][metric]) for a in bases}
    ranked = sorted(value, key=lambda n: -METRICS[metric] * value[n])
    return ", ".join(f"{n} {FORMATS[metric](value[n])}" for n in ranked)


def experiment_text(name: str, record: dict[str, Any]) -> str:
    """What one experiment asked, its noise floor and its arms ranked."""
    return (f"{record['question']} Source: {name}/results.json. Main arm: {record['main']}. Real-vs-real FID "
            f"floor: {floor_text(record)}; the judge on real images: {pct_text(record['judge_real_accuracy'])}. "
            f"Final FID, best first: {ranking_text(record, 'fid')}. Final class accuracy, best first: "
            f"{ranking_text(record, 'class_accuracy')}. "
            + ("Each figure: dots = our value (seed mean), capped bar = sampling 95% interval, wide "
               "translucent bar = seed 95% interval, rings = the seeds' values, dashed = the floor."
               if has_intervals(record) else "No intervals were recorded: the figures show the values only."))


def rules_text(experiments: list[tuple[str, dict[str, Any]]]) -> str:
    """The rule that judged the verdicts: the interval rule, and the old one where any experiment's
    results were written before intervals existed."""
    old = [experiment_label(n, r) for n, r in experiments if not has_intervals(r)]
    text = VERDICT_RULE if len(old) < len(experiments) else ""
    if old:
        text += f" {', '.join(old)}: {OLD_RULE}"
    return text.strip()


def write_summary(root: str | Path, out: str | Path) -> tuple[Path, Path]:
    """Write ``out/summary.html`` (figures under ``out/summary-figures``) and ``out/summary.md`` from
    every ``root/NAME/results.json``; returns (html, markdown)."""
    experiments = gather(Path(root))
    out = Path(out)
    claims = [claim_rows(name, record) for name, record in experiments]
    table = markdown(experiments, claims)
    md_path = atomic_write(out / SUMMARY_MD, lambda f: f.write(table), mode="w")
    rows = [COLUMNS + ["real-vs-real FID floor"]]
    for (_, record), claimed in zip(experiments, claims):
        rows += [row + [floor_text(record)] for row in claimed]
    page = Report("FAE miniature experiments: the paper's claims vs ours",
                  intro=f"{len(experiments)} experiments ({', '.join(n for n, _ in experiments)}), each read from "
                        f"its NAME/results.json. " + rules_text(experiments))
    page.add("Verdicts", tables=[("one row per claim and metric; the markdown version is summary.md", rows)])
    for name, record in experiments:
        figures = [claim_figure(record, row, out / FIGURES / f"{name}-{i + 1}.png")
                   for i, row in enumerate(record["verdicts"])]
        page.add(record.get("title", name) + (" (--quick)" if record.get("quick") else ""),
                 experiment_text(name, record), figures=figures)
    page.add("summary.md", table, code=True)
    return page.write(out / SUMMARY_HTML), md_path
