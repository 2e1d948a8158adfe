"""Kill-anywhere resume of the generator and the autoencoder on two ranks (torchrun, gloo, CPU):
every rank SIGKILLs itself at a seeded step after a checkpoint, a relaunch finishes the run, and
its final checkpoint equals an uninterrupted two-rank run's bitwise: models, EMA, optimiser
state, schedules, step, data position and every rank's RNG state. Same tiny configs as the
single-process tests in test_stage_resume.py; one launch per kill (the two side by side), then one for
all the rest (the resumes and the uninterrupted runs)."""
from __future__ import annotations

import json
import random
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from fae.training.metrics_log import read_metrics
from launch import torchrun
from test_stage_resume import KILL_CLI, LOOP, REPO, STAGES, STEPS, _final_state, world  # noqa: F401
from training_helpers import assert_bitwise_equal

COMMANDS = Path(__file__).with_name("fae_commands.py")
PYTHONPATH = [REPO / "src", COMMANDS.parent]
DDP_STAGES = ["generator", "autoencoder"]


def _argv(stage: str, w: Path, run_dir: Path) -> list[str]:
    """``fae train stage`` with test_stage_resume's tiny overrides (its --config a shipped config's name)."""
    overrides, _ = STAGES[stage]
    overrides = [o.replace("{w}", str(w)) for o in overrides + LOOP]
    return ["train", stage, *overrides, f"train.run_dir={run_dir}"]


def _kill(stage: str, w: Path, tmp_path: Path) -> tuple[Path, int]:
    """Launch ``stage`` on two ranks that SIGKILL themselves at a seeded step; returns its run
    folder and the step of its newest checkpoint."""
    at = random.Random(f"ddp-{stage}").randint(STAGES[stage][1], STEPS - 1)  # seeded
    killed = tmp_path / stage / "killed"
    proc = torchrun(KILL_CLI, at, *_argv(stage, w, killed), pythonpath=PYTHONPATH, check=False)
    assert proc.returncode != 0 and proc.stderr.count("Signal 9 (SIGKILL)") == 2, \
        proc.stdout[-3000:] + proc.stderr[-3000:]  # both ranks killed themselves
    saved = max(int(p.stem[5:]) for p in (killed / "checkpoints").glob("step-*.pt"))
    assert 2 <= saved <= at < STEPS
    return killed, saved


@pytest.mark.slow
def test_stages_killed_anywhere_on_two_ranks_resume_bitwise(world, tmp_path):
    with ThreadPoolExecutor(len(DDP_STAGES)) as pool:  # the killed launches side by side
        killed = dict(zip(DDP_STAGES, pool.map(lambda s: _kill(s, world, tmp_path), DDP_STAGES)))
    finish = [_argv(stage, world, tmp_path / stage / run)
              for stage in DDP_STAGES for run in ("killed", "reference")]
    (tmp_path / "commands.json").write_text(json.dumps(finish))
    out = torchrun(COMMANDS, tmp_path / "commands.json", pythonpath=PYTHONPATH).stdout
    for stage, (run_dir, saved) in killed.items():
        assert f"{run_dir}/checkpoints/step-{saved:08d}.pt (step {saved})" in out, stage  # resumed
        state = _final_state(run_dir)
        assert state["world_size"] == 2 and len(state["rng"]) == 2
        assert_bitwise_equal(state, _final_state(tmp_path / stage / "reference"), stage)
        assert [r["step"] for r in read_metrics(run_dir, "train")] == list(range(1, STEPS + 1))
        assert read_metrics(run_dir, "eval")[-1] == read_metrics(tmp_path / stage / "reference",
                                                                 "eval")[-1]
