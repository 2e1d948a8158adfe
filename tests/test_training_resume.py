"""Checkpoints and resume: kill -9 mid-run then resume == uninterrupted run, bit for bit; an
interrupted save keeps the last good checkpoint; run-folder rules (--force, --no-resume)."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import fae.io
from fae.errors import CheckpointError
from fae.training.checkpoint import CheckpointManager, load_file
from fae.training.engine import train
from fae.training.metrics_log import read_metrics
from training_helpers import assert_bitwise_equal, single_thread, toy_stage

# Dropout (step RNG) + random flips (item RNG) + EMA + AdamW + cosine warm-up: everything a
# resume must restore or re-derive exactly.
KILL_RUN = ["train.steps=30", "train.ckpt_every=5", "train.keep_last=2", "train.milestones=[10]",
            "dropout=0.2", "augment=true", "train.optim.schedule=cosine",
            "train.optim.warmup_steps=5", "step_delay_s=0.05"]


def _final_state(run_dir: Path, step: int) -> dict:
    state = load_file(run_dir / "checkpoints" / f"step-{step:08d}.pt")
    state.pop("config")  # holds run_dir, which differs on purpose
    return state


@pytest.mark.slow
def test_killed_run_resumes_bitwise_exact(tmp_path):
    killed_dir, reference_dir = tmp_path / "killed", tmp_path / "reference"
    cmd = [sys.executable, str(Path(__file__).with_name("toy_cli.py")), "train", "toy", f"train.run_dir={killed_dir}",
           "train.steps=6", "train.batch_size=8", "train.log_every=1", "train.progress=false",
           "train.ema_decay=0.9", "train.optim.lr=0.003", "train.tensorboard=false", *KILL_RUN]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    manager = CheckpointManager(killed_dir / "checkpoints")
    deadline = time.time() + 240
    while not any(s >= 10 for s in manager.steps()) and proc.poll() is None:
        assert time.time() < deadline, "the subprocess never reached step 10"
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    output = proc.communicate()[0].decode()
    assert proc.returncode == -signal.SIGKILL, output
    assert max(manager.steps()) < 30, "the run finished before it was killed"

    with single_thread():
        resumed = train(toy_stage(killed_dir, *KILL_RUN))
        reference = train(toy_stage(reference_dir, *KILL_RUN))
    assert 10 <= resumed["resumed_from"] < 30 and reference["resumed_from"] is None
    # Models, EMA, optimiser moments, schedules, step, data position and every RNG state.
    assert_bitwise_equal(_final_state(killed_dir, 30), _final_state(reference_dir, 30))
    assert resumed["eval"] == reference["eval"]
    # Milestone 10 survives pruning; metrics hold each step exactly once.
    assert manager.steps() == [10, 25, 30]
    assert [r["step"] for r in read_metrics(killed_dir, "train")] == list(range(1, 31))


def test_save_interrupted_before_rename_keeps_last_checkpoint(tmp_path, monkeypatch):
    run_dir = tmp_path / "run"
    real_replace = os.replace

    def crash_on_step_4(src, dst):
        if str(dst).endswith("step-00000004.pt"):
            raise KeyboardInterrupt("simulated crash between write and rename")
        return real_replace(src, dst)

    monkeypatch.setattr(fae.io.os, "replace", crash_on_step_4)
    with single_thread(), pytest.raises(KeyboardInterrupt):
        train(toy_stage(run_dir))
    monkeypatch.setattr(fae.io.os, "replace", real_replace)
    manager = CheckpointManager(run_dir / "checkpoints")
    assert manager.steps() == [2]
    # What a SIGKILL at that moment leaves: a stray temp file (and maybe a corrupt newer file).
    (run_dir / "checkpoints" / ".step-00000004.pt.abc123.tmp").write_bytes(b"half a checkpoint")
    state, path = manager.load_latest()
    assert state["step"] == 2 and path.name == "step-00000002.pt"

    with single_thread():
        resumed = train(toy_stage(run_dir))
        reference = train(toy_stage(tmp_path / "reference"))
    assert resumed["resumed_from"] == 2
    assert_bitwise_equal(_final_state(run_dir, 6), _final_state(tmp_path / "reference", 6))


def test_corrupt_newest_checkpoint_falls_back(tmp_path, capsys):
    manager = CheckpointManager(tmp_path, keep_last=5)
    manager.save({"step": 1, "w": torch.ones(3)}, 1)
    (tmp_path / "step-00000002.pt").write_bytes(b"truncated")
    state, path = manager.load_latest()
    assert state["step"] == 1 and torch.equal(state["w"], torch.ones(3))
    assert "step-00000002.pt" in capsys.readouterr().out


def test_keep_last_and_milestones(tmp_path):
    manager = CheckpointManager(tmp_path, keep_last=2, milestones=[2])
    for step in range(1, 6):
        manager.save({"step": step}, step)
    assert manager.steps() == [2, 4, 5]


def test_different_config_refuses_resume_unless_forced(tmp_path):
    run_dir = tmp_path / "run"
    with single_thread():
        train(toy_stage(run_dir, "train.steps=2"))
        with pytest.raises(CheckpointError, match=r"train\.optim\.lr.*--force"):
            train(toy_stage(run_dir, "train.steps=2", "train.optim.lr=0.01"))
        # Logging cadence is not part of what a run computes: no refusal.
        assert train(toy_stage(run_dir, "train.steps=2", "train.log_every=2"))["resumed_from"] == 2
        forced = train(toy_stage(run_dir, "train.steps=4", "train.optim.lr=0.01"), force=True)
    assert forced["resumed_from"] == 2 and forced["step"] == 4
    assert "lr: 0.01" in (run_dir / "config.yaml").read_text()
    assert (run_dir / "config.previous.yaml").is_file()


def test_no_resume_refuses_existing_checkpoints_unless_forced(tmp_path):
    run_dir = tmp_path / "run"
    with single_thread():
        train(toy_stage(run_dir, "train.steps=2"))
        with pytest.raises(CheckpointError, match="already holds checkpoints"):
            train(toy_stage(run_dir, "train.steps=2"), resume=False)
        fresh = train(toy_stage(run_dir, "train.steps=2"), resume=False, force=True)
    assert fresh["resumed_from"] is None


def test_all_checkpoints_unreadable_refuses_unless_restart(tmp_path):
    run_dir = tmp_path / "run"
    with single_thread():
        train(toy_stage(run_dir, "train.steps=4", "train.ckpt_every=2"))
        old_lines = (run_dir / "metrics.jsonl").read_text()
        for path in (run_dir / "checkpoints").glob("step-*.pt"):
            path.write_bytes(b"damaged")
        with pytest.raises(CheckpointError, match=r"step-00000004\.pt, .*step-00000002\.pt; newest: not a complete.*--restart"):
            train(toy_stage(run_dir, "train.steps=4", "train.ckpt_every=2"))
        assert (run_dir / "metrics.jsonl").read_text() == old_lines  # refused: nothing touched
        again = train(toy_stage(run_dir, "train.steps=4", "train.ckpt_every=2"), restart=True)
    assert again["resumed_from"] is None and again["step"] == 4
    aside = run_dir / "checkpoints" / "unreadable"
    assert sorted(p.name for p in aside.iterdir()) == ["step-00000002.pt", "step-00000004.pt"]
    assert (aside / "step-00000004.pt").read_bytes() == b"damaged"
    # the first run's lines are kept beside the new log, which holds each step once
    assert (run_dir / "metrics.previous-1.jsonl").read_text() == old_lines
    assert [r["step"] for r in read_metrics(run_dir, "train")] == [1, 2, 3, 4]


def test_resume_keeps_dropped_metric_lines_aside(tmp_path):
    run_dir = tmp_path / "run"
    with single_thread():
        train(toy_stage(run_dir, "train.steps=4", "train.ckpt_every=2"))
        full = (run_dir / "metrics.jsonl").read_text()
        (run_dir / "checkpoints" / "step-00000004.pt").unlink()  # as if killed after logging 3, 4
        assert train(toy_stage(run_dir, "train.steps=4", "train.ckpt_every=2"))["resumed_from"] == 2
    assert (run_dir / "metrics.previous-1.jsonl").read_text() == full
    assert [r["step"] for r in read_metrics(run_dir, "train")] == [1, 2, 3, 4]


def test_architecture_change_under_force_is_a_named_error(tmp_path):
    run_dir = tmp_path / "run"
    with single_thread():
        train(toy_stage(run_dir, "train.steps=2"))
        with pytest.raises(CheckpointError, match=r"step-00000002\.pt' does not fit the models.*size mismatch"):
            train(toy_stage(run_dir, "train.steps=4", "hidden=16"), force=True)


def test_a_foreign_file_named_like_a_checkpoint_is_a_named_error(tmp_path):
    run_dir = tmp_path / "run"
    with single_thread():
        train(toy_stage(run_dir, "train.steps=2"))
        torch.save({"weights": torch.ones(2)}, run_dir / "checkpoints" / "step-00000009.pt")
        with pytest.raises(CheckpointError, match=r"step-00000009\.pt' is not a training checkpoint "
                                                  r"of fae \(no step, nan_skips"):
            train(toy_stage(run_dir, "train.steps=2"))


def test_resuming_from_an_older_checkpoint_sets_the_damaged_newer_one_aside(tmp_path):
    run_dir = tmp_path / "run"
    with single_thread():
        train(toy_stage(run_dir, "train.steps=4", "train.ckpt_every=2"))
        newest = run_dir / "checkpoints" / "step-00000004.pt"
        newest.write_bytes(b"cut")
        assert train(toy_stage(run_dir, "train.steps=4", "train.ckpt_every=2"))["resumed_from"] == 2
    assert (run_dir / "checkpoints" / "unreadable" / "step-00000004.pt").read_bytes() == b"cut"
    assert load_file(newest)["step"] == 4  # written again by the resumed run
