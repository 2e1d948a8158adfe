"""The demo's steps: each trains one stage through the one training loop (or writes the latent
cache), skipping it when its outputs are still fresh (``fae.freshness``); then the evaluation and
the report."""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from fae import freshness
from fae.autoencoder import FAE
from fae.autoencoder.pixel_decoder import PixelDecoder
from fae.config import to_dict
from fae.data.datasets import DataConfig
from fae.data.latent_cache import CacheConfig, complete_cache
from fae.demo.config import DemoConfig, StageRun
from fae.demo.evaluate import evaluate_step
from fae.demo.report import write_report
from fae.demo.shared_eval import judge_step
from fae.demo.stages import StageSpec, stage_spec, train_stage
from fae.demo.t2i import t2i_cache_step, t2i_evaluate_step, t2i_folder, t2i_overrides
from fae.generation import Generator
from fae.generation.t2i_generator import TextToImageGenerator
from fae.io import atomic_save_json
from fae.training.latents import cache_latents


@dataclass
class Step:
    """One step of the pipeline. ``run`` skips the work when the step's outputs are still valid and
    returns what it did ("ran", "resumed", "restarted (why)", "skipped (outputs valid)")."""

    title: str
    run: Callable[[], str]


def cache_step(cfg: DemoConfig, fae_dir: Path, out: Path, demo_dir: Path) -> str:
    """Encode the training images once with the final FAE, from the shared token cache: skipped
    when the cache is complete and records this FAE export and data plan, resumed when it was
    interrupted, written again (saying so) when it was produced from anything else."""
    data = DataConfig(name="fashion-mnist", root=cfg.data_root, split="train", limit=cfg.latents.limit)
    cache_cfg = CacheConfig(fae=str(fae_dir), out=str(out), data=data, flip=False,
                            batch_size=cfg.latents.batch_size, token_cache_dir=str(demo_dir / "token_cache"))
    key = freshness.content_key({"data": to_dict(data), "batch_size": cache_cfg.batch_size}, [fae_dir])
    return freshness.produce(out, key, lambda: complete_cache(out, fae_dir), lambda: cache_latents(cache_cfg),
                             "latent cache")


def stage_specs(cfg: DemoConfig, base: Path, out: Path) -> dict[str, StageSpec]:
    """The four training stages with the overrides the demo gives them (run folders, the shared
    token cache, the backbone named once, and the exports each stage reads)."""
    ae, ib, ii, lat, gen = (out / n for n in ("autoencoder", "pixel_decoder_ib", "pixel_decoder_ii",
                                               "latents", "generator"))
    root = [f"data.root={cfg.data_root}"] if cfg.data_root else []
    tokens = [f"token_cache_dir={out / 'token_cache'}"]
    backbone = [f"backbone.name={cfg.backbone.name}", f"backbone.resolution={cfg.backbone.resolution}"]
    common = lambda d: [f"train.run_dir={d}"] + root + tokens  # noqa: E731
    return {
        "ae": stage_spec("autoencoder", "autoencoder", cfg.autoencoder, base, common(ae) + backbone),
        "ib": stage_spec("pixel_decoder_ib", "pixel-decoder", cfg.pixel_decoder_ib, base, common(ib) + backbone),
        "ii": stage_spec("pixel_decoder_ii", "pixel-decoder", cfg.pixel_decoder_ii, base,
                         common(ii) + [f"fae={ae / 'export'}", f"init_from={ib / 'export'}"]),
        "gen": stage_spec("generator", "generator", cfg.generator, base,
                          [f"train.run_dir={gen}", f"data.cache={lat}", f"data.fae={ii / 'export'}",
                           f"{generator_section(cfg.generator, base)}.num_classes=10"]),
    }


def generator_section(run: StageRun, base: Path) -> str:
    """The architecture section of the generator stage's config ("model" for the diffusion
    transformer, "flow" for STARFlow: ``kind`` in its file or overrides)."""
    return stage_spec("generator", "generator", run, base, []).validate().architecture_section


def pipeline(cfg: DemoConfig, base: Path, out: Path) -> list[Step]:
    """The demo's steps, in order; later steps read the exports of earlier ones. The backbone is
    named once (``cfg.backbone``) for the two stages that start from images; stage II, the latent
    cache and the generator read it (and the latent shape) from the exports. Every stage shares one
    token cache, so each image goes through the backbone once. Every stage's config is validated
    here, before the first step runs (a typo in the generator's overrides costs no training)."""
    specs = stage_specs(cfg, base, out)
    if cfg.t2i.enabled:
        steps = specs["gen"].validate().train.steps  # the class-conditional generator's
        specs["t2i"] = stage_spec("t2i.generator", "generator", cfg.t2i.generator, base,
                                  t2i_overrides(cfg, out, steps))
    for spec in specs.values():
        spec.validate()
    ae, ib, ii, lat = (out / n for n in ("autoencoder", "pixel_decoder_ib", "pixel_decoder_ii", "latents"))
    return [
        Step("stage Ia: FAE encoder + feature decoder", lambda: train_stage(
            specs["ae"], [], FAE.from_pretrained)),
        Step("stage Ib: pixel decoder on noisy backbone features", lambda: train_stage(
            specs["ib"], [], PixelDecoder.from_pretrained)),
        Step("stage II: pixel decoder fine-tuned on FAE features", lambda: train_stage(
            specs["ii"], [ae / "export", ib / "export"],
            FAE.from_pretrained)),
        Step("latent cache of the training images", lambda: cache_step(cfg, ii / "export", lat, out)),
        Step("class-conditional generator", lambda: train_stage(
            specs["gen"], [lat / "manifest.json"], Generator.from_pretrained)),
    ] + (t2i_steps(cfg, out, specs["t2i"]) if cfg.t2i.enabled else [])


def t2i_steps(cfg: DemoConfig, out: Path, spec: StageSpec) -> list[Step]:
    """``--t2i``: the captioned latent cache and the MMDiT (its evaluation runs after the judge)."""
    latents = t2i_folder(out) / "latents"
    return [Step("text-to-image: captioned latent cache", lambda: t2i_cache_step(cfg, out)),
            Step("text-to-image: MMDiT", lambda: train_stage(spec, [latents / "manifest.json"],
                                                             TextToImageGenerator.from_pretrained))]


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
    out = Path(out).resolve()
    steps = pipeline(cfg, base, out)  # validates every stage before anything is written
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    timings = [timed(s.title, s.run) for s in steps]
    timings.append(timed("pixel classifier (judge of decoded images)", lambda: judge_step(cfg)))
    metrics: dict[str, Any] = {}

    def evaluation() -> str:
        status, values = evaluate_step(cfg, out)
        metrics.update(values)
        return status

    timings.append(timed("sampling and evaluation", evaluation))
    if cfg.t2i.enabled:
        def t2i_evaluation() -> str:
            status, values = t2i_evaluate_step(cfg, out, metrics)
            metrics["t2i"] = values
            return status

        timings.append(timed("text-to-image: sampling and evaluation", t2i_evaluation))
    total = time.perf_counter() - start
    atomic_save_json({"quick": quick, "total_wall_s": round(total, 1), "steps": timings},
                     out / "timings.json")
    report = write_report(cfg, out, metrics, timings, total, quick)
    print(f"\n[demo] finished in {total:.1f} s", flush=True)
    return report
