"""Score a generator checkpoint: FID against real test images and class accuracy by the judge.

Everything is the demo's or the library's: samples come from ``fae.demo.evaluate.draw_samples``
(class-balanced, fixed noise), the judge is the demo's pixel classifier
(``fae.demo.evaluate.classifier_step``), features and distances are ``fae.evaluation``'s. What is
new here is only the bookkeeping: a checkpoint's EMA weights as a ``Generator``, the shared
reference statistics with the real-vs-real floor at the samples' N, and a per-checkpoint result
file that a re-run reuses while the checkpoint, the decoder and the settings are unchanged.
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
from fae.demo.evaluate import INCEPTION_CPU_BATCH, classifier_path, classifier_step, draw_samples, real_images
from fae.evaluation.pixel_classifier import PixelClassifier
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
        floor: FID of the next ``fid_samples`` real test images against them (same N as the samples).
        judge: the pixel classifier; ``judge_real``: its accuracy on the floor's real images.
    """

    scorer: FIDScorer
    floor: float
    judge: Any
    judge_real: float
    key: str


def reference(cfg, ev: Evaluation, store: Path) -> Reference:
    """Reference features + floor (cached in ``store``) and the judge (trained once per settings)."""
    judge_settings = {"train_images": cfg.eval.classifier_train_images, "steps": cfg.eval.classifier_steps,
                      "data_root": cfg.data_root}
    judge_dir = store / f"judge-{digest(judge_settings)}"
    classifier_step(cfg, judge_dir)
    judge = PixelClassifier.load(classifier_path(judge_dir))
    key = digest({"reference_images": ev.reference_images, "n": ev.fid_samples, "data_root": cfg.data_root})
    scorer = FIDScorer(batch_size=INCEPTION_CPU_BATCH)

    def floor() -> dict[str, float]:  # the next fid_samples real test images against the reference
        other = real_images(cfg, "test", ev.reference_images, ev.fid_samples)
        return {"floor": scorer.score(other, "inception (floor: other test images)")}

    saved = scorer.cached_reference(store / f"reference-{key}.pt", key,
                                    lambda: real_images(cfg, "test", 0, ev.reference_images),
                                    "inception (reference test images)", extras=floor)
    labels = FashionMNIST("test", root=cfg.data_root).labels
    floor_images = real_images(cfg, "test", ev.reference_images, ev.fid_samples)
    judge_real = judge.accuracy(floor_images, labels[ev.reference_images:ev.reference_images + ev.fid_samples])
    return Reference(scorer, float(saved["floor"]), judge, judge_real, key + digest(judge_settings))


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
    # draw_samples' second (unguided) draw is only the grid's; its guided draw is what is scored.
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
    guided, _, _ = draw_samples(_eval_settings(ev), generator, decoder)
    metrics = {"step": step, "fid": ref.scorer.score(guided.images, f"inception (samples, step {step})"),
               "class_accuracy": ref.judge.accuracy(guided.images, guided.labels), "samples": len(guided)}
    if likelihood is not None:
        metrics["bits_per_dim"] = likelihood(generator)
    shown = guided.images[:10 * ev.grid_per_class]
    atomic_torch_save({"images": shown, "labels": guided.labels[:len(shown)]}, images)
    atomic_save_json({"key": key, "metrics": metrics}, record)
    return "ran", metrics
