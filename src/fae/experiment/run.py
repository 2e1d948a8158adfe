"""Run an experiment: every arm's stages (shared, cached, resumable), its generator with kept
checkpoints, the evaluation of each checkpoint, then ``results.json`` and the report.

Per arm, in order: the upstream stages its latent space needs (``fae.demo.pipeline.train_stage``:
skipped when valid, resumed when interrupted, restarted when their config changed), its latent
cache, the generator (``ROOT/NAME/ARM/generator``, a checkpoint kept at every evaluated step), and
one evaluation per checkpoint (``ROOT/NAME/ARM/eval``). An arm whose ``result.json`` was written
for the same resolved config, stages and evaluation settings is skipped outright; a changed arm
reruns only what changed (the stage store is keyed on content, the generator's run folder restarts
when its config differs, each checkpoint's scores are keyed on the checkpoint file).
"""
from __future__ import annotations

import functools
import json
import time
from pathlib import Path
from typing import Any, Callable

from fae.autoencoder import FAE
from fae.autoencoder.pixel_autoencoder import PixelAutoencoder
from fae.autoencoder.pixel_decoder import PixelDecoder
from fae.config import to_dict
from fae.data.fashion_mnist import FashionMNIST
from fae.demo.stages import train_stage
from fae.errors import ConfigError
from fae.experiment.config import ExperimentConfig, ResolvedArm
from fae.experiment.evaluate import evaluate_checkpoint, reference
from fae.experiment.likelihood import bits_per_dim, gaussian_bits, held_out_latents
from fae.experiment.latent_spaces import space_of
from fae.experiment.plan import plan_arm
from fae.experiment.report import write_report
from fae.experiment.store import ArmPlan, resolved_config, run_dir, stage_key
from fae.experiment.verdict import results_record
from fae.generation import load_generator
from fae.io import atomic_save_json
from fae.training.metrics_log import read_metrics

STORE = "_stages"  # ROOT/_stages: stages and latent caches shared by every experiment (the judge and the
# reference features: the evaluation cache shared with the demo, fae.demo.shared_eval)


def say(message: str) -> None:
    print(f"[experiment] {message}", flush=True)


def timed(title: str, action: Callable[[], str]) -> dict[str, Any]:
    """Run one step, printing and returning its status and wall / CPU time."""
    wall, cpu = time.perf_counter(), time.process_time()
    status = action()
    record = {"step": title, "status": status, "wall_s": round(time.perf_counter() - wall, 1),
              "cpu_s": round(time.process_time() - cpu, 1)}
    say(f"  {title}: {status} in {record['wall_s']:.1f} s (CPU {record['cpu_s']:.1f} s)")
    return record


def likelihood_for(plan: ArmPlan, decoder, ev) -> Callable[[Any], float]:
    """For a flow arm: generator -> bits per dimension on the held-out test latents of the arm's
    space (``fae.experiment.likelihood``; encoded once, on first use)."""

    @functools.cache
    def held():
        cfg = plan.arm.config
        test = FashionMNIST("test", root=cfg.data_root)
        n = ev.likelihood_images
        return held_out_latents(space_of(plan).encoder(plan, decoder), test.images[:n], test.labels[:n], ev.batch_size)

    return lambda generator: bits_per_dim(generator, held(), ev.seed, ev.batch_size)


# ------------------------------------------------------------------------------ one arm


# section -> what loads (and checks) its export
LOADERS: dict[str, Callable[[Path], Any]] = {
    "autoencoder": FAE.from_pretrained, "pixel_decoder_ib": PixelDecoder.from_pretrained,
    "pixel_decoder_ii": FAE.from_pretrained, "pixel_autoencoder": PixelAutoencoder.from_pretrained,
    "generator": load_generator}


def loss_summary(folder: Path) -> dict[str, float]:
    """Training loss (the '<phase>/loss' values) averaged over the first and the last quarter of
    the logged intervals of a run folder (single log lines are too noisy to say a loss fell)."""
    rows = [r for r in read_metrics(folder, kind="train") if any(k.endswith("/loss") for k in r)]
    if not rows:
        return {}
    value = lambda row: float(next(v for k, v in row.items() if k.endswith("/loss")))  # noqa: E731
    k = max(1, len(rows) // 4)
    return {"first_step": rows[k - 1]["step"], "first": sum(map(value, rows[:k])) / k,
            "last_step": rows[-1]["step"], "last": sum(map(value, rows[-k:])) / k}


def _stage_metrics(plan: ArmPlan) -> dict[str, dict[str, Any]]:
    """Each upstream stage's final evaluation (e.g. the FAE's feature cosine and probe)."""
    found = {}
    for section, spec in plan.stages.items():
        path = run_dir(spec) / "eval.json"
        if path.is_file():
            found[section] = json.loads(path.read_text())
    return found


def run_arm(plan: ArmPlan, exp: ExperimentConfig, ref, index: int, total: int) -> dict[str, Any]:
    """Train and evaluate one arm (or reuse its result.json); returns its result record."""
    arm = plan.arm
    key = plan.key({**to_dict(exp.evaluation), "reference": ref.key})
    result_path = plan.folder / "result.json"
    say(f"arm {index}/{total}: {arm.name} ({', '.join(f'{k}={v[1]}' for k, v in arm.diff.items()) or 'main arm'})")
    if result_path.is_file():
        saved = json.loads(result_path.read_text())
        if saved.get("key") == key:
            say(f"  {arm.name}: skipped (finished; same config, stages and evaluation)")
            return {**saved, "status": "skipped"}
    start = time.perf_counter()
    plan.folder.mkdir(parents=True, exist_ok=True)
    atomic_save_json({"name": arm.name, "overrides": arm.overrides, "diff": arm.diff,
                      "config": to_dict(arm.config)}, plan.folder / "arm.json")
    timings = [timed(section, lambda s=section, p=spec: train_stage(p, space_of(plan).upstream(plan, s), LOADERS[s]))
               for section, spec in plan.stages.items()]
    timings.append(timed("latent cache", lambda: space_of(plan).write_latents(plan)))
    timings.append(timed("generator", lambda: train_stage(plan.generator, [plan.latents / "manifest.json"],
                                                          LOADERS["generator"])))
    decoder, decoder_file = space_of(plan).decoder(plan)
    generator_cfg = resolved_config(plan.generator)
    flow = generator_cfg.kind == "flow"
    likelihood = likelihood_for(plan, decoder, exp.evaluation) if flow else None
    curve = []
    for step in plan.steps:
        def score(step=step) -> str:
            status, metrics = evaluate_checkpoint(plan.generator, step, decoder, decoder_file, exp.evaluation,
                                                  ref, plan.folder / "eval", likelihood)
            curve.append(metrics)
            return status
        timings.append(timed(f"evaluation at step {step}", score))
    result = {"name": arm.name, "key": key, "replicate_of": arm.replicate_of, "space": arm.config.space,
              "overrides": arm.overrides, "diff": arm.diff, "latent_shape": list(plan.latent_shape),
              **plan.recorded_paths(),
              "curve": curve, "final": curve[-1], "generator_loss": loss_summary(run_dir(plan.generator)),
              "generator_kind": generator_cfg.kind,
              **({"gaussian_bits_per_dim": gaussian_bits(generator_cfg.flow.noise_std)} if flow else {}),
              "stage_losses": {s: loss_summary(run_dir(p)) for s, p in plan.stages.items()},
              "stage_metrics": _stage_metrics(plan), "timings": timings,
              "wall_s": round(time.perf_counter() - start, 1)}
    atomic_save_json(result, result_path)
    return {**result, "status": "ran"}


# ------------------------------------------------------------------------------ the experiment


def check_replicates(plans: list[ArmPlan]) -> None:
    """A seed replicate must train something else than the arm it replicates (e.g. not the seed it has)."""
    def keys(plan: ArmPlan) -> list[str]:
        return [stage_key(s) for s in plan.stages.values()] + [stage_key(plan.generator)]

    by_name = {p.arm.name: p for p in plans}
    for plan in plans:
        main = by_name.get(plan.arm.replicate_of or "")
        if main is not None and keys(plan) == keys(main):
            raise ConfigError(f"experiment arm '{plan.arm.name}' trains exactly what the arm "
                              f"'{main.arm.name}' trains (its seed is that arm's); choose other 'seeds'")


def run_experiment(exp: ExperimentConfig, arms: list[ResolvedArm], base: Path, name: str, root: str | Path,
                   quick: bool = False) -> Path:
    """Run every arm, write ``ROOT/NAME/results.json`` and ``report.html``; returns the report."""
    root = Path(root).resolve()
    store, folder = root / STORE, root / name
    plans = [plan_arm(arm, base, folder, store, exp.evaluation.steps_of(arm)) for arm in arms]  # validates every stage
    check_replicates(plans)
    start = time.perf_counter()
    say(f"{exp.title}: {len(plans)} arms in {folder} (stages shared in {store})")
    store.mkdir(parents=True, exist_ok=True)
    ref = reference(arms[0].config, exp.evaluation)
    say(f"real-vs-real FID floor at N = {exp.evaluation.fid_samples}: {ref.floor:.2f}; judge on real test "
        f"images: {100 * ref.judge_real:.1f}%")
    results = [run_arm(p, exp, ref, i + 1, len(plans)) for i, p in enumerate(plans)]
    record = results_record(exp, name, results, ref, quick, round(time.perf_counter() - start, 1))
    atomic_save_json(record, folder / "results.json")
    report = write_report(record, folder)
    say(f"finished in {record['total_wall_s']:.0f} s; results: {folder / 'results.json'}")
    return report
