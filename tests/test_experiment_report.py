"""The experiment report and the summary page (`fae experiment report`) drawn from results.json alone.

A synthetic results.json with known intervals renders the table rows with exactly those numbers,
the recorded verdict and what decided it, and its figures carry the intervals as error bars (the
drawn segments are read back from the matplotlib figure). The five kept runs in docs/experiments
(written before intervals existed) still render, verdicts as recorded. The summary's markdown
table keeps one column count on every row, and neither output names a machine path.
"""
from __future__ import annotations

import copy
import json
import re
import shutil
from pathlib import Path

import pytest

from fae.cli import main
from fae.errors import ConfigError
from fae.experiment import report as report_module
from fae.experiment.report import claim_figure, curve_figure, has_intervals, write_report
from fae.experiment.summary import COLUMNS, SUMMARY_HTML, SUMMARY_MD, write_summary
from kept_experiments import DOCS, KEPT, OLD_RULE_RUN, read


A_FINAL_CI, A_SEED = [76.5, 84.25], [74.15, 86.85]
B_FINAL_CI, B_SEED = [104.0, 117.0], [100.0, 120.5]


def _point(step: int, fid: float, fid_ci: list[float], acc: float, acc_ci: list[float]) -> dict:
    return {"step": step, "fid": fid, "fid_ci": fid_ci, "class_accuracy": acc, "class_accuracy_ci": acc_ci,
            "samples": 100}


def _arm(name: str, curve: list[dict], replicate_of: str | None = None) -> dict:
    return {"name": name, "replicate_of": replicate_of, "diff": {} if name == "a" else {"space": ["a", name]},
            "latent_shape": [8, 4, 4], "generator_loss": {"first": 1.5, "last": 0.7}, "wall_s": 10.0,
            "curve": curve, "final": curve[-1], "stage_metrics": {}, "timings": []}


def synthetic_record() -> dict:
    """Two arms 'a' and 'b', each with a seed replicate, every number chosen by hand."""
    arms = {
        "a": _arm("a", [_point(100, 90.0, [85.0, 96.0], 0.5, [0.42, 0.58]),
                        _point(200, 80.0, A_FINAL_CI, 0.7, [0.6042, 0.7811])]),
        "b": _arm("b", [_point(100, 120.0, [113.0, 128.0], 0.45, [0.37, 0.53]),
                        _point(200, 110.0, B_FINAL_CI, 0.66, [0.56, 0.75])]),
        "a-s2": _arm("a-s2", [_point(100, 92.0, [86.0, 98.0], 0.52, [0.44, 0.60]),
                              _point(200, 81.0, [77.0, 85.5], 0.69, [0.59, 0.77])], replicate_of="a"),
        "b-s2": _arm("b-s2", [_point(100, 119.0, [112.0, 127.0], 0.47, [0.39, 0.55]),
                              _point(200, 110.5, [104.5, 117.5], 0.67, [0.57, 0.76])], replicate_of="b"),
    }
    groups = {"a": {"fid": {"mean": 80.5, "sd": 0.7071, "values": [80.0, 81.0], "interval": A_SEED},
                    "class_accuracy": {"mean": 0.695, "sd": 0.00707, "values": [0.7, 0.69], "interval": [0.631, 0.759]}},
              "b": {"fid": {"mean": 110.25, "sd": 0.3536, "values": [110.0, 110.5], "interval": B_SEED},
                    "class_accuracy": {"mean": 0.665, "sd": 0.00707, "values": [0.66, 0.67], "interval": [0.601, 0.729]}}}
    verdict = {"better": "a", "worse": "b", "source": "Paper T1: a 2.0 vs b 3.0",
               "fid": {"better": 80.5, "worse": 110.25, "margin": 29.75, "verdict": "agrees",
                       "decided_by": "sampling and seed intervals separate",
                       "intervals": {"better": {"sampling": A_FINAL_CI, "seed": A_SEED},
                                     "worse": {"sampling": B_FINAL_CI, "seed": B_SEED}}},
               "class_accuracy": {"better": 0.695, "worse": 0.665, "margin": 0.03, "verdict": "inside the noise",
                                  "decided_by": "sampling intervals overlap",
                                  "intervals": {"better": {"sampling": [0.6042, 0.7811], "seed": [0.631, 0.759]},
                                                "worse": {"sampling": [0.56, 0.75], "seed": [0.601, 0.729]}}},
               "verdict": "agrees"}
    return {"experiment": "toy", "title": "Toy: a vs b", "question": "Is a better than b?", "quick": False,
            "variable": ["space"], "main": "a", "seeds": [2], "seed_keys": ["generator.overrides.train.seed"],
            "evaluation": {"steps": [100, 200], "fid_samples": 100, "reference_images": 200},
            "floor": {"fid": 50.0, "fid_ci": [47.0, 53.5], "n": 100, "reference_images": 200},
            "judge_real_accuracy": 0.9, "arms": arms, "groups": groups, "verdicts": [verdict],
            "status": {n: "ran" for n in arms}, "total_wall_s": 40.0}


def cells(*values) -> str:
    return "".join(f"<td>{v}</td>" for v in values)


@pytest.fixture
def captured(monkeypatch):
    """Every matplotlib figure the report draws, kept open for inspection (then rendered as usual)."""
    figures = []
    real = report_module.figure_image

    def keep(fig):
        figures.append(fig)
        return real(fig)

    monkeypatch.setattr(report_module, "figure_image", keep)
    return figures


def _segments(*axes) -> set[tuple[float, float]]:
    """(low, high) of every vertical segment drawn on ``axes`` (error bars and vlines), rounded to
    4 decimals."""
    spans = set()
    for ax in axes:
        for collection in ax.collections:
            for seg in getattr(collection, "get_segments", lambda: [])():
                if len(seg) == 2 and seg[0][0] == pytest.approx(seg[1][0]):
                    spans.add((round(min(seg[0][1], seg[1][1]), 4), round(max(seg[0][1], seg[1][1]), 4)))
    return spans


def test_report_rows_carry_the_recorded_intervals_and_what_decided(tmp_path):
    record = synthetic_record()
    page = write_report(record, tmp_path).read_text()
    assert "<tr>" + cells("a beats b", "Paper T1: a 2.0 vs b 3.0", "FID", "80.50 vs 110.25", "agrees",
                          "sampling and seed intervals separate", "sampling [76.50, 84.25]; seeds [74.15, 86.85]",
                          "sampling [104.00, 117.00]; seeds [100.00, 120.50]") + "</tr>" in page
    assert "<tr>" + cells("a beats b", "Paper T1: a 2.0 vs b 3.0", "class accuracy", "69.5% vs 66.5%",
                          "inside the noise", "sampling intervals overlap", "sampling [60.4%, 78.1%]; seeds [63.1%, 75.9%]",
                          "sampling [56.0%, 75.0%]; seeds [60.1%, 72.9%]") + "</tr>" in page
    assert "<tr>" + cells("a", "200", "80.00 [76.50, 84.25]", "70.0% [60.4%, 78.1%]") + "</tr>" in page
    assert "<tr>" + cells("b", "2", "110.25 ± 0.35", "[100.00, 120.50]", "110.00, 110.50",
                          "66.5% ± 0.7%", "[60.1%, 72.9%]", "66.0%, 67.0%") + "</tr>" in page
    assert "real-vs-real floor 50.00 (N = 100) [47.00, 53.50]" in page
    assert "both separate" in page  # the interval rule, not the old spread rule
    # two curves and one claim figure, inlined (no samples: this record has no evaluation files)
    assert len(re.findall(r"src='data:image/png;base64,", page)) == 3
    assert str(tmp_path) not in page


def test_a_record_judged_by_the_verdict_code_renders_its_intervals(tmp_path):
    """The report reads what fae.experiment.verdict writes: groups and verdicts recomputed from the
    synthetic arms (seed interval of a = 80.5 ± t(0.975, 1) * 0.5 = [74.15, 86.85])."""
    from fae.experiment.verdict import groups, verdicts

    record = synthetic_record()
    record["groups"] = groups(record["arms"])
    claim = type("Claim", (), {"better": "a", "worse": "b", "source": "Paper T1"})
    record["verdicts"] = verdicts([claim], record["arms"], record["groups"])
    fid = record["verdicts"][0]["fid"]
    assert fid["intervals"]["better"]["seed"] == pytest.approx(A_SEED, abs=0.01)
    assert (fid["verdict"], fid["decided_by"]) == ("agrees", "sampling and seed intervals separate")
    page = write_report(record, tmp_path).read_text()
    assert cells("80.50 vs 110.25", "agrees", "sampling and seed intervals separate",
                 "sampling [76.50, 84.25]; seeds [74.15, 86.85]", "sampling [104.00, 117.00]; seeds [107.07, 113.43]") in page
    accuracy = record["verdicts"][0]["class_accuracy"]
    assert cells("69.5% vs 66.5%", accuracy["verdict"], accuracy["decided_by"]) in page
    assert accuracy["verdict"] == "inside the noise"


def test_curves_draw_sampling_intervals_and_the_seed_band(tmp_path, captured):
    record = synthetic_record()
    curve_figure(record, "fid", tmp_path)
    spans = _segments(*captured[-1].axes)
    for arm in record["arms"].values():  # every checkpoint's sampling interval, replicates included
        for point in arm["curve"]:
            assert tuple(point["fid_ci"]) in spans
    assert tuple(A_SEED) in spans and tuple(B_SEED) in spans  # the seed groups at the last step
    ax = captured[-1].axes[0]
    assert [line.get_label() for line in ax.lines if not line.get_label().startswith("_")] == \
        ["a", "b", "real-vs-real floor (N = 100)"]
    thin = [line for line in ax.lines if line.get_linewidth() < 1.0 and line.get_linestyle() == "-"]  # not caps
    assert sorted(list(line.get_ydata()) for line in thin) == [[92.0, 81.0], [119.0, 110.5]]  # the replicates


def test_claim_figure_draws_both_intervals_of_both_arms(tmp_path, captured):
    record = synthetic_record()
    claim_figure(record, record["verdicts"][0], tmp_path / "claim.png")
    fid_ax, acc_ax = captured[-1].axes
    assert {tuple(A_FINAL_CI), tuple(A_SEED), tuple(B_FINAL_CI), tuple(B_SEED)} <= _segments(fid_ax)
    assert {(0.6042, 0.7811), (0.631, 0.759), (0.56, 0.75), (0.601, 0.729)} <= _segments(acc_ax)
    assert fid_ax.get_title() == "FID: agrees" and acc_ax.get_title() == "class accuracy: inside the noise"
    rings = [line for line in fid_ax.lines if line.get_markerfacecolor() == "none"]
    assert sorted(list(line.get_ydata()) for line in rings) == [[80.0, 81.0], [110.0, 110.5]]


def test_runs_without_intervals_still_render(tmp_path):
    record = read(OLD_RULE_RUN)
    page = write_report(record, tmp_path).read_text()
    for v in record["verdicts"]:
        f = v["fid"]
        assert cells(f"{f['better']:.2f} vs {f['worse']:.2f}", f["verdict"]) in page  # as recorded
        rule = "beyond" if abs(f["margin"]) > f["spread"] else "within"
        assert f"old rule: margin {abs(f['margin']):.2f} {rule} seed spread {f['spread']:.2f}" in page
    assert "Recorded before intervals existed" in page
    assert "[95% interval]" not in page  # no interval columns invented


@pytest.mark.parametrize("path", KEPT, ids=lambda p: p.parent.name)
def test_kept_runs_render_their_recorded_verdicts(path, tmp_path):
    record = read(path)
    page = write_report(record, tmp_path).read_text()
    for v in record["verdicts"]:
        for metric in ("fid", "class_accuracy"):
            entry = v[metric]
            assert entry["verdict"] in page
            if has_intervals(record):
                assert entry["decided_by"] in page and "Student t over the seeds" in page
            else:
                assert "Recorded before intervals existed" in page


def _root_with(tmp_path: Path, records: dict[str, dict]) -> Path:
    root = tmp_path / "runs"
    for name, record in records.items():
        (root / name).mkdir(parents=True)
        (root / name / "results.json").write_text(json.dumps(record))
    (root / "_stages").mkdir()  # the store beside the experiments is not one of them
    return root


def _table_rows(markdown: str) -> list[list[str]]:
    """The markdown table's rows split on unescaped pipes."""
    lines = [line for line in markdown.splitlines() if line.startswith("|")]
    return [[c.strip() for c in re.split(r"(?<!\\)\|", line)[1:-1]] for line in lines]


def test_summary_table_row_has_the_numbers_and_every_row_its_columns(tmp_path):
    old = read(OLD_RULE_RUN)
    root = _root_with(tmp_path, {"toy": synthetic_record(), "encoder": old})
    html, md = write_summary(root, tmp_path / "out")
    assert (html.name, md.name) == (SUMMARY_HTML, SUMMARY_MD)
    rows = _table_rows(md.read_text())
    assert {len(row) for row in rows} == {len(COLUMNS)}
    assert rows[0] == COLUMNS and set(rows[1]) == {"---"}
    assert ["toy", "a beats b (FID)", "Paper T1: a 2.0 vs b 3.0",
            "80.50 (sampling [76.50, 84.25]; seeds [74.15, 86.85]) vs 110.25 (sampling [104.00, 117.00]; "
            "seeds [100.00, 120.50])", "agrees", "sampling and seed intervals separate"] in rows
    assert ["toy", "a beats b (class accuracy)", "Paper T1: a 2.0 vs b 3.0",
            "69.5% (sampling [60.4%, 78.1%]; seeds [63.1%, 75.9%]) vs 66.5% (sampling [56.0%, 75.0%]; "
            "seeds [60.1%, 72.9%])", "inside the noise", "sampling intervals overlap"] in rows
    assert len(rows) == 2 + 2 * (len(old["verdicts"]) + 1)  # header, rule, two metrics per claim
    old_rows = [row for row in rows if row[0] == "encoder"]
    assert [row[4] for row in old_rows] == [v[m]["verdict"] for v in old["verdicts"]
                                            for m in ("fid", "class_accuracy")]
    page = html.read_text()
    assert "<td>50.00 [47.00, 53.50] (N = 100)</td></tr>" in page  # the floor column
    assert "Final FID, best first: a 80.50, b 110.25" in page  # seed means rank the arms
    assert len(re.findall(r"src='data:image/png;base64,", page)) == 1 + len(old["verdicts"])  # one per claim
    for text in (page, md.read_text()):
        assert str(tmp_path) not in text and "/work/" not in text
    assert not list((tmp_path / "out").glob(".*.tmp"))  # atomic writes leave no temp files


def test_summary_of_every_kept_run(tmp_path):
    html, md = write_summary(DOCS, tmp_path)
    rows = _table_rows(md.read_text())
    claims = sum(len(read(p)["verdicts"]) for p in KEPT)
    assert len(rows) == 2 + 2 * claims and {len(row) for row in rows} == {len(COLUMNS)}
    assert {row[0] for row in rows[2:]} == {p.parent.name for p in KEPT}
    assert "/work/" not in html.read_text() and "/work/" not in md.read_text()


def test_cli_report_and_its_refusals(tmp_path, capsys):
    root = _root_with(tmp_path, {"toy": synthetic_record()})
    assert main(["experiment", "report", "--root", str(root), "--out", str(tmp_path / "page")]) == 0
    out = capsys.readouterr().out
    assert f"summary: {tmp_path / 'page' / SUMMARY_HTML}" in out
    assert (tmp_path / "page" / SUMMARY_MD).is_file()
    assert main(["experiment", "report", "--root", str(root)]) == 0  # --out defaults to the root
    assert (root / SUMMARY_HTML).is_file()
    capsys.readouterr()
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["experiment", "report", "--root", str(empty)]) == 2
    assert "holds no NAME/results.json" in capsys.readouterr().err
    assert main(["experiment", "report", "--root", str(root), "seeds=[1]"]) == 2
    assert "takes --root ROOT and --out DIR only" in capsys.readouterr().err
    assert main(["experiment", "time-shift", "--root", str(root)]) == 2
    assert "--root is an option of `fae experiment report`" in capsys.readouterr().err
    broken = copy.deepcopy(synthetic_record())
    del broken["verdicts"]
    (root / "toy" / "results.json").write_text(json.dumps(broken))
    with pytest.raises(ConfigError, match="toy/results.json under --root is not an experiment's results"):
        write_summary(root, tmp_path / "x")
    shutil.rmtree(root / "toy")
    (root / "toy").mkdir()
    (root / "toy" / "results.json").write_text("{")
    with pytest.raises(ConfigError, match="toy/results.json under --root is not JSON"):
        write_summary(root, tmp_path / "x")
