"""Score a generator checkpoint: FID against real test images and class accuracy by the judge,
each with its 95% interval.

Everything is the demo's or the library's: samples come from ``fae.demo.evaluate.draw_samples``
(class-balanced, fixed noise; the guided draw only), the judge and the test images' Inception
features are the evaluation cache the demo shares (``fae.demo.shared_eval``: trained / computed
once per content for the demo and every experiment), distances and intervals are
``fae.evaluation``'s. What is new here is only the bookkeeping: a checkpoint's EMA weights as a
``Generator``, the reference with the real-vs-real floor at the samples' N, and a per-checkpoint
result file that a re-run reuses while the checkpoint, the decoder and the settings are unchanged.
Each sample set goes through Inception once: its FID and its bootstrap interval read the same
features.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from fae import freshness
from fae.config import to_dict
from fae.data.fashion_mnist import FashionMNIST
from fae.demo.config import EvalSettings
from fae.demo.evaluate import draw_samples, judged, real_images, scored
from fae.demo.shared_eval import RealTestFeatures, judge_key, load_judge
from fae.evaluation.scorer import FIDScorer
from fae.experiment.config import Evaluation
from fae.experiment.store import digest, run_dir
from fae.io import atomic_save_json, atomic_torch_save
from fae.training.checkpoint import CheckpointManager, load_ema_weights
from fae.training.stages.registry import load_stage


@dataclass
class Reference:
    """Shared by every arm: the FID scorer against the real test images, and the judge.

    Attributes:
        scorer: FID against the pool features of the first ``reference_images`` test images.
        floor: FID of the next ``fid_samples`` real test images against them (same N as the samples);
            ``floor_ci``: its bootstrap interval, as every sample FID's (``FIDScorer.fid_interval``).
        judge: the pixel classifier; ``judge_real``: its accuracy on the floor's real images.
    """

    scorer: FIDScorer
    floor: float
    floor_ci: tuple[float, float]
    judge: Any
    judge_real: float
    key: str


def reference(cfg, ev: Evaluation, real: RealTestFeatures | None = None) -> Reference:
    """The scorer against the first ``reference_images`` test images, the floor (the next
    ``fid_samples`` against them) and the judge, all from the evaluation cache the demo shares
    (``fae.demo.shared_eval``; ``real``: its test features, default the ADM network's)."""
    real = real or RealTestFeatures(cfg.data_root)
    judge = load_judge(cfg)
    scorer = real.scorer_for(ev.reference_images)
    floor_features = real.floor_features(ev.reference_images, ev.fid_samples)  # one read for both
    floor, floor_ci = scorer.fid(floor_features), scorer.fid_interval(floor_features)
    labels = FashionMNIST("test", root=cfg.data_root).labels
    floor_images = real_images(cfg, "test", ev.reference_images, ev.fid_samples)
    judge_real = judge.accuracy(floor_images, labels[ev.reference_images:ev.reference_images + ev.fid_samples])
    key = digest({"reference_images": ev.reference_images, "n": ev.fid_samples, "features": real.key(),
                  "judge": judge_key(cfg.eval, cfg.data_root)})
    return Reference(scorer, floor, floor_ci, judge, judge_real, key)


def checkpoint_generator(spec, step: int):
    """The generator of ``spec``'s run at checkpoint ``step``, with its EMA weights (a checkpoint
    without them is an error)."""
    stage = load_stage(spec.kind, spec.config, spec.overrides)
    stage.setup(torch.device("cpu"))  # the cache: statistics and identity
    network = stage.build_models("cpu")["generator"]
    run = Path(stage.config.train.run_dir)
    load_ema_weights(network, CheckpointManager(run / "checkpoints").path(step), "generator")
    return stage.wrap(network.eval())


def _eval_settings(ev: Evaluation):
    # Only draw_samples' guided draw is made (unguided=False): it is what is scored and shown.
    return EvalSettings(fid_samples=ev.fid_samples, fid_without_cfg=False, sampling=dict(ev.sampling),
                        grid_per_class=ev.grid_per_class, batch_size=ev.batch_size, seed=ev.seed)


def evaluation_key(checkpoint: Path, decoder_file: Path | None, ev: Evaluation, ref: Reference,
                   likelihood: bool = False) -> str:
    """What one checkpoint's scores depend on (``fae.freshness``): the checkpoint and decoder
    files, the evaluation settings and the reference."""
    return freshness.content_key({"evaluation": to_dict(ev), "reference": ref.key, "likelihood": likelihood},
                                 [checkpoint] + ([] if decoder_file is None else [decoder_file]))


def evaluate_checkpoint(spec, step: int, decoder, decoder_file: Path | None, ev: Evaluation, ref: Reference,
                        folder: Path, likelihood: Callable[[Any], float] | None = None
                        ) -> tuple[str, dict[str, float]]:
    """FID and class accuracy of checkpoint ``step`` (cached in ``folder/step-XXXXXXXX.json`` and the
    grid's images in ``.pt``); with ``likelihood`` (generator -> bits per dimension on held-out
    latents, for flow generators) also ``bits_per_dim``."""
    checkpoint = CheckpointManager(run_dir(spec) / "checkpoints").path(step)
    key = evaluation_key(checkpoint, decoder_file, ev, ref, likelihood is not None)
    record, images = folder / f"step-{step:08d}.json", folder / f"step-{step:08d}.pt"
    if record.is_file() and images.is_file():
        saved = json.loads(record.read_text())
        if saved.get("key") == key:
            return "skipped (outputs valid)", saved["metrics"]
    generator = checkpoint_generator(spec, step)
    guided, _, _ = draw_samples(_eval_settings(ev), generator, decoder, unguided=False)
    metrics = {"step": step, **scored(ref.scorer, guided.images, "fid", f"inception (samples, step {step})"),
               **judged(ref.judge, guided.images, guided.labels, "class_accuracy"), "samples": len(guided)}
    if likelihood is not None:
        metrics["bits_per_dim"] = likelihood(generator)
    shown = guided.images[:10 * ev.grid_per_class]
    atomic_torch_save({"images": shown, "labels": guided.labels[:len(shown)]}, images)
    atomic_save_json({"key": key, "metrics": metrics}, record)
    return "ran", metrics
