"""Logs a person can read: tqdm on a terminal, a plain line every 10% elsewhere (never a carriage
return), nothing with FAE_PROGRESS=off; the training loop's progress in a log; TensorBoard events
when the package is there and one line saying they are off when it is not."""
from __future__ import annotations

import io
import sys
import types

import pytest
import torch
from tqdm import tqdm

import fae.progress
from fae.data.batches import iterate_batches
from fae.errors import ConfigError
from fae.progress import LineProgress, progress_mode, show_progress
from fae.training.engine import train
from fae.training.metrics_log import MetricsLog, read_metrics, tensorboard_missing_line
from training_helpers import single_thread, toy_stage


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


class FakeClock:
    """Seconds that advance only when told to."""

    def __init__(self):
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture(autouse=True)
def no_user_progress_mode(monkeypatch):
    """The user's $FAE_PROGRESS must not decide what these tests see."""
    monkeypatch.delenv("FAE_PROGRESS", raising=False)


def run_lines(updates: int, seconds_each: float, total: int | None, **kwargs) -> list[str]:
    """The lines a LineProgress prints for ``updates`` unit updates ``seconds_each`` apart."""
    out, clock = io.StringIO(), FakeClock()
    bar = LineProgress(total=total, desc="demo", unit="img", stream=out, clock=clock, **kwargs)
    for _ in range(updates):
        clock.now += seconds_each
        bar.update(1)
    bar.close()
    assert "\r" not in out.getvalue()
    return out.getvalue().splitlines()


def test_a_log_gets_one_line_per_tenth_with_percent_rate_and_time_left():
    lines = run_lines(1000, 0.1, total=1000)
    assert len(lines) == 10
    assert [line.split("%")[0] for line in lines] == [f"demo: {p}" for p in range(10, 101, 10)]
    assert lines[3] == "demo: 40% (400/1000 img) 10.0 img/s, 40 s elapsed, ~1 min 00 s left"
    assert lines[-1] == "demo: 100% (1000/1000 img) 10.0 img/s, done in 1 min 40 s"


def test_a_short_pass_prints_only_its_last_line():
    lines = run_lines(1000, 0.002, total=1000)  # 2 s in all: tenths come < 5 s after the start
    assert lines == ["demo: 100% (1000/1000 img) 500.0 img/s, done in 2 s"]


def test_slow_work_prints_a_line_every_minute_and_rates_below_one_per_second():
    lines = run_lines(5, 25.0, total=1000)  # 0.5% of the work in 125 s: no tenth is crossed
    assert lines == ["demo: 0% (3/1000 img) 25.0 s/img, 1 min 15 s elapsed, ~6 h 55 min left",
                     "demo: 0% (5/1000 img) 25.0 s/img, done in 2 min 05 s"]


def test_unknown_total_prints_counts_once_a_minute():
    lines = run_lines(150, 1.0, total=None)
    assert lines == ["demo: 60 img 1.0 img/s, 1 min 00 s elapsed", "demo: 120 img 1.0 img/s, 2 min 00 s elapsed",
                     "demo: 150 img 1.0 img/s, done in 2 min 30 s"]


def test_postfix_and_resume_show_in_the_line():
    out, clock = io.StringIO(), FakeClock()
    with LineProgress(total=10, initial=6, desc="train toy", unit="step", stream=out, clock=clock) as bar:
        clock.now += 8.0
        bar.update(2)  # 80%: the rate counts only the 2 steps of this run
        bar.set_postfix({"loss": "0.1234"}, refresh=False)
        clock.now += 4.0
        bar.update(2)
    assert out.getvalue().splitlines() == [
        "train toy: 80% (8/10 step) 4.0 s/step, 8 s elapsed, ~8 s left",
        "train toy: 100% (10/10 step) 3.0 s/step, done in 12 s, loss=0.1234"]


def test_iteration_counts_items_and_ends_with_one_line():
    out = io.StringIO()
    bar = LineProgress(range(7), desc="captions", unit="batch", stream=out)
    assert list(bar) == list(range(7))
    bar.close()  # a second close prints nothing more
    lines = out.getvalue().splitlines()
    assert len(lines) == 1 and lines[0].startswith("captions: 100% (7/7 batch) ")


def test_nothing_counted_prints_nothing():
    out = io.StringIO()
    LineProgress(total=10, initial=10, desc="train", stream=out).close()  # a finished run resumed
    assert out.getvalue() == ""


def test_the_mode_follows_the_terminal_and_fae_progress(monkeypatch):
    assert progress_mode(Terminal()) == "bar" and progress_mode(io.StringIO()) == "lines"
    bar = show_progress(total=3, desc="x", stream=Terminal())
    assert isinstance(bar, tqdm)
    bar.close()
    assert isinstance(show_progress(total=3, stream=io.StringIO()), LineProgress)
    monkeypatch.setenv("FAE_PROGRESS", "lines")
    assert isinstance(show_progress(total=3, stream=Terminal()), LineProgress)
    monkeypatch.setenv("FAE_PROGRESS", "Bar")
    bar = show_progress(total=3, stream=io.StringIO())
    assert isinstance(bar, tqdm)
    bar.close()
    monkeypatch.setenv("FAE_PROGRESS", "quiet")
    with pytest.raises(ConfigError, match="FAE_PROGRESS='quiet'.*bar, lines, off"):
        progress_mode()


def test_off_and_disabled_print_nothing_but_still_iterate(monkeypatch, capsys):
    assert list(show_progress(range(5), desc="x", disable=True, stream=Terminal())) == list(range(5))
    monkeypatch.setenv("FAE_PROGRESS", "off")
    out = Terminal()
    with show_progress(total=100, desc="x", stream=out) as bar:
        bar.update(100)
    assert list(show_progress(range(4))) == list(range(4))
    assert out.getvalue() == "" and capsys.readouterr().err == ""


def test_a_dataset_pass_writes_plain_lines_to_a_log(capsys):
    dataset = [(torch.zeros(1, 2, 2, dtype=torch.uint8), i) for i in range(10)]
    labels = torch.cat([y for _, y in iterate_batches(dataset, 4, progress=True, desc="tokens")])
    assert labels.tolist() == list(range(10))
    err = capsys.readouterr().err  # pytest's capture is not a terminal
    assert "\r" not in err and err.startswith("tokens: 100% (10/10 img) ") and err.count("\n") == 1


def test_training_in_a_log_writes_plain_lines_and_says_once_that_tensorboard_is_off(
        tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # as if not installed
    monkeypatch.setattr(fae.progress, "MIN_GAP_S", 0.0)  # the toy run lasts a second or two
    with single_thread():
        train(toy_stage(tmp_path / "run", "train.steps=20", "train.log_every=5", "train.ckpt_every=0",
                        "train.progress=true", "train.tensorboard=true"))
    err = capsys.readouterr().err
    assert "\r" not in err
    steps = [line for line in err.splitlines() if line.startswith("train toy: ")]
    assert [line.split("%")[0] for line in steps] == [f"train toy: {p}" for p in range(10, 101, 10)]
    assert steps[-1].startswith("train toy: 100% (20/20 step) ") and "done in" in steps[-1]
    loss = read_metrics(tmp_path / "run", "train")[-1]["main/loss"]
    assert f"loss={loss:.4g}" in steps[-1]
    assert err.count("TensorBoard") == 1
    assert tensorboard_missing_line(tmp_path / "run" / "metrics.jsonl") in err.splitlines()
    assert "pip install 'fae-latents[tensorboard]'" in err and "train.tensorboard=false" in err
    assert not (tmp_path / "run" / "tensorboard").exists()


def test_tensorboard_events_are_written_when_the_package_is_there(tmp_path, monkeypatch, capsys):
    written = []

    class SummaryWriter:  # stands in for torch.utils.tensorboard's (the extra is not installed here)
        def __init__(self, log_dir: str):
            written.append(("open", log_dir))

        def add_scalar(self, tag: str, value: float, step: int) -> None:
            written.append((tag, value, step))

        def flush(self) -> None:
            pass

        def close(self) -> None:
            written.append(("close",))

    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", types.SimpleNamespace(SummaryWriter=SummaryWriter))
    log = MetricsLog(tmp_path, tensorboard=True)
    log.log(5, {"main/loss": 0.5, "note": "text"})
    log.close()
    assert written == [("open", str(tmp_path / "tensorboard")), ("train/main/loss", 0.5, 5), ("close",)]
    assert capsys.readouterr().err == ""
    MetricsLog(tmp_path / "off", tensorboard=False).close()
    MetricsLog(tmp_path / "rank1", enabled=False, tensorboard=True).close()
    assert len(written) == 3 and capsys.readouterr().err == ""
