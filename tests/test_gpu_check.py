"""bench/gpu_check.sh --smoke: every part's code path on the CPU at tiny sizes, and its report."""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
import gpu_check  # noqa: E402


@pytest.fixture(scope="module")
def smoke(tmp_path_factory) -> tuple[dict, Path]:
    out = tmp_path_factory.mktemp("gpu_check")
    env = {**os.environ, "PYTHON": sys.executable}
    proc = subprocess.run(["bash", str(ROOT / "bench" / "gpu_check.sh"), str(out), "--smoke"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return json.loads((out / "gpu_check.json").read_text()), out


def test_smoke_run_writes_every_step_with_sane_figures(smoke):
    results, out = smoke
    for key in ("date", "gpu", "gpu_kind", "torch_version", "bf16_peak_measured_flops",
                "bf16_peak_datasheet_flops"):
        assert key in results, key
    assert results["smoke"] is True and results["gpu_kind"] == "other"
    assert results["bf16_peak_measured_flops"] > 0 and results["peak_measured_flops"] > 0
    for step in gpu_check.STEP_KEYS:
        figures = results["steps"][step]
        assert figures["status"] == "ok", (step, figures.get("error"), figures.get("traceback"))
        for key in gpu_check.FIGURE_KEYS:
            assert key in figures, (step, key)
        assert math.isfinite(figures["images_per_s"]) and figures["images_per_s"] > 0, step
        assert figures["flops_per_image"] > 0, step
        assert math.isfinite(figures["achieved_flops_per_s"]) and figures["achieved_flops_per_s"] > 0, step
        assert 0 < figures["mfu_measured"] < 1.5, (step, figures["mfu_measured"])
        assert figures["mfu_datasheet"] is None  # a CPU has no datasheet bf16 peak in the table
        assert figures["peak_memory_bytes"] is None  # CUDA's allocator statistics only
        assert figures["micro_batch"] >= 1 and figures["compiled"] is False
    report = (out / "gpu_check.md").read_text()
    assert "SMOKE RUN" in report and "| sit_xl1 |" in report and "ours / diffusers" in report


def test_fae_plan_reads_the_installed_figures(smoke, tmp_path, monkeypatch):
    """The JSON's shape is the one fae.training.plan.hardware reads (steps -> mfu_datasheet)."""
    from fae.training.plan import hardware

    results, _ = smoke
    record = {**results, "gpu_kind": "h200"}
    record["steps"] = {**results["steps"], "sit_xl1": {**results["steps"]["sit_xl1"], "mfu_datasheet": 0.37}}
    (tmp_path / "h200.json").write_text(json.dumps(record))
    monkeypatch.setattr(hardware, "MEASURED_DIR", tmp_path)
    used = hardware.utilisation("h200", "generator")
    assert used.mfu == 0.37 and results["date"] in used.source


def test_model_flops_count_the_backward_of_trained_networks_only(smoke):
    results, _ = smoke
    # a training step is about 3x its forward; sampling is forward only (100 evaluations per sample)
    sit = results["steps"]["sit_xl1"]["flops_per_image"]
    sampling = results["steps"]["sampling_heun50_cfg"]["flops_per_image"]
    steps = 2  # the smoke sampler's steps: 2 Heun steps x (cond + null) x 2 evaluations
    assert 2.5 < sit / (sampling / (4 * steps)) < 3.5


def test_gpu_kinds_and_datasheet_peaks():
    assert gpu_check.gpu_kind("NVIDIA H200", 143e9) == "h200"
    assert gpu_check.gpu_kind("NVIDIA H100 80GB HBM3", 85e9) == "h100-80gb"
    assert gpu_check.gpu_kind("NVIDIA A100-SXM4-80GB", 85e9) == "a100-80gb"
    assert gpu_check.gpu_kind("NVIDIA A100-SXM4-40GB", 42e9) == "other"
    assert gpu_check.datasheet_peak("NVIDIA H200") == 989e12
    assert gpu_check.datasheet_peak("NVIDIA H100 PCIe") == 756e12
    assert gpu_check.datasheet_peak("NVIDIA A100-SXM4-80GB") == 312e12
    assert gpu_check.datasheet_peak("Tesla T4") is None


def test_markdown_says_plainly_when_a_target_is_missed():
    ok = {"status": "ok", "images_per_s": 100.0, "mfu_measured": 0.30}
    text = "\n".join(gpu_check.verdicts({"sit_xl1": ok, "diffusers_dit_xl1": {**ok, "images_per_s": 90.0}}))
    assert "BELOW the 1.2x target" in text and "under 45% of measured peak" in text
    good = {"sit_xl1": {**ok, "images_per_s": 130.0, "mfu_measured": 0.5},
            "diffusers_dit_xl1": {**ok, "images_per_s": 100.0}}
    assert "BELOW" not in "\n".join(gpu_check.verdicts(good))


def test_install_refuses_a_smoke_run(smoke):
    _, out = smoke
    with pytest.raises(SystemExit, match="smoke"):
        gpu_check.install(out)


def test_out_of_memory_halves_the_micro_batch():
    import torch

    settings = gpu_check.smoke_settings()
    settings.batches["toy"] = 8

    def build():
        if settings.batches["toy"] > 2:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return gpu_check.Work(lambda: None, settings.batches["toy"], None)

    out = gpu_check.measure(build, settings, {}, 5.0, "toy")
    assert out["status"] == "ok" and out["micro_batch"] == 2 and out["out_of_memory_at"] == [8, 4]
    assert settings.batches["toy"] == 2  # what a compiled rerun of the same step starts from
