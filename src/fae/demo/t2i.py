"""``fae demo --t2i``: a small text-to-image MMDiT on the demo FAE's Fashion-MNIST latents, trained
on generated captions and judged on phrasings it never saw.

Steps (after the class-conditional demo's; each skipped while its outputs are valid):

1. captioned latent cache (``out/t2i/latents``): the class-conditional generator's training images
   (the first ``latents.limit``), encoded from the shared token cache, each with one generated
   caption (``fae.demo.captions``: a training phrasing of its class + dark/light by its mean
   intensity against its class median) and that caption's all-MiniLM-L6-v2 embedding, computed
   once per distinct caption;
2. the MMDiT (``demo/t2i_generator.yaml``), trained through the one training loop for the
   class-conditional generator's number of steps;
3. evaluation (``out/t2i/eval``), by the demo's own helpers: ``eval.fid_samples`` samples asked for
   in the held-out phrasings (balanced over classes and attributes) and ``t2i.seen_samples`` in the
   training phrasings, with the generator's sampler (``eval.sampling`` overrides, as for the
   class-conditional samples). Measured: class accuracy by the demo's pixel judge, attribute
   accuracy (the generated image's mean intensity against the same class thresholds), and FID of
   the held-out-phrasing samples against the demo's reference test images, beside the
   real-vs-real floor at the same N (from the main evaluation).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from fae import freshness
from fae.autoencoder import FAE
from fae.config import to_dict
from fae.data.datasets import DataConfig
from fae.data.fashion_mnist import FashionMNIST
from fae.data.latent_cache import CacheConfig, complete_cache
from fae.demo.captions import (HELD_OUT_TEMPLATES, TRAIN_TEMPLATES, attributes, class_thresholds, prompt_set,
                               training_captions)
from fae.demo.evaluate import sampling_summary
from fae.demo.shared_eval import RealTestFeatures, judge_path
from fae.evaluation.pixel_classifier import PixelClassifier
from fae.generation.decode import SampleDecoder, check_pair, sampler_config
from fae.generation.t2i_generator import TextToImageGenerator
from fae.io import atomic_save_json, atomic_torch_save
from fae.training.latents import cache_latents


def t2i_folder(out: Path) -> Path:
    return out / "t2i"


def t2i_overrides(cfg, out: Path, steps: int) -> list[str]:
    """The MMDiT stage's overrides: the demo's FAE and captioned cache, the text encoder named
    once, and ``steps`` = the class-conditional generator's (equal steps by construction)."""
    t2i, folder = cfg.t2i, t2i_folder(out)
    return [f"train.run_dir={folder / 'generator'}", f"data.cache={folder / 'latents'}",
            f"data.fae={out / 'pixel_decoder_ii' / 'export'}", "kind=mmdit", f"text.encoder={t2i.text_encoder}",
            f"text.max_length={t2i.text_max_length}", "text.embeddings=cache", f"train.steps={steps}"]


# ------------------------------------------------------------------------------------------ captions


def training_set(cfg) -> tuple[list[str], torch.Tensor]:
    """(one caption per captioned training image, per-class brightness thresholds [10])."""
    train = FashionMNIST("train", root=cfg.data_root, limit=cfg.latents.limit)
    thresholds = class_thresholds(train.images, train.labels)
    attrs = attributes(train.images, train.labels, thresholds)
    return training_captions(train.labels, attrs, cfg.t2i.caption_seed), thresholds


def t2i_cache_step(cfg, out: Path) -> str:
    """Write the captioned latent cache unless it holds these captions, from the current FAE, with
    this text encoder."""
    fae_dir, folder = out / "pixel_decoder_ii" / "export", t2i_folder(out) / "latents"
    captions, _ = training_set(cfg)
    data = DataConfig(name="fashion-mnist", root=cfg.data_root, split="train", limit=cfg.latents.limit)
    cache_cfg = CacheConfig(fae=str(fae_dir), out=str(folder), data=data, flip=False,
                            batch_size=cfg.latents.batch_size, token_cache_dir=str(out / "token_cache"),
                            text_encoder=cfg.t2i.text_encoder, text_max_length=cfg.t2i.text_max_length)
    key = freshness.content_key({"data": to_dict(data), "batch_size": cache_cfg.batch_size,
                                 "text_encoder": [cfg.t2i.text_encoder, cfg.t2i.text_max_length],
                                 "captions": captions}, [fae_dir])
    return freshness.produce(folder, key, lambda: complete_cache(folder, fae_dir),
                             lambda: cache_latents(cache_cfg, captions=captions), "captioned latent cache")


# ------------------------------------------------------------------------------------------ evaluation


def _key(cfg, out: Path) -> str:
    """What the text-to-image evaluation depends on (``fae.freshness``): settings, exports, judge."""
    return freshness.content_key(
        {"eval": to_dict(cfg.eval), "t2i": to_dict(cfg.t2i), "latents": to_dict(cfg.latents),
         "data_root": cfg.data_root},
        [out / "pixel_decoder_ii" / "export", t2i_folder(out) / "generator" / "export", judge_path(cfg)])


def t2i_evaluate_step(cfg, out: Path, main_metrics: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """Evaluate unless ``out/t2i/eval`` holds results for these exports and settings."""
    folder = t2i_folder(out) / "eval"
    key = _key(cfg, out)
    metrics_path, images_path = folder / "metrics.json", folder / "images.pt"
    if metrics_path.is_file() and images_path.is_file():
        saved = json.loads(metrics_path.read_text())
        if saved.get("key") == key:
            return "skipped (outputs valid)", saved["metrics"]
    metrics, images = evaluate_t2i(cfg, out, main_metrics)
    atomic_torch_save(images, images_path)
    atomic_save_json({"key": key, "metrics": metrics}, metrics_path)
    return "ran", metrics


def _judged(judge, batch, classes: torch.Tensor, attrs: torch.Tensor, thresholds: torch.Tensor) -> dict[str, float]:
    if len(classes) == 0:
        return {}
    measured = attributes(batch.images, classes, thresholds)
    return {"class_accuracy": judge.accuracy(batch.images, classes),
            "attribute_accuracy": float((measured == attrs).double().mean())}


@torch.no_grad()
def evaluate_t2i(cfg, out: Path, main_metrics: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """The text-to-image metrics (module docstring) and the samples the prompt grid shows."""
    ev, t2i = cfg.eval, cfg.t2i
    fae_dir, gen_dir = out / "pixel_decoder_ii" / "export", t2i_folder(out) / "generator" / "export"
    fae = FAE.from_pretrained(fae_dir)
    generator = TextToImageGenerator.from_pretrained(gen_dir)
    check_pair(generator, fae.identity(), fae.latent_shape, str(gen_dir), str(fae_dir))
    judge = PixelClassifier.load(judge_path(cfg))
    _, thresholds = training_set(cfg)
    sampling = sampler_config(generator, ev.sampling)
    decoder = SampleDecoder(generator, fae, sampling, ev.batch_size)
    m: dict[str, Any] = {"sampler": sampling_summary(sampling), "train_templates": list(TRAIN_TEMPLATES),
                         "held_out_templates": list(HELD_OUT_TEMPLATES), "thresholds": thresholds.tolist(),
                         "steps": json.loads((gen_dir.parent / "eval.json").read_text()).get("step")}
    sets = {"held_out": (ev.fid_samples, HELD_OUT_TEMPLATES), "seen": (t2i.seen_samples, TRAIN_TEMPLATES)}
    samples = {}
    for name, (n, templates) in sets.items():
        prompts, classes, attrs = prompt_set(n, templates)
        batch = decoder.all(range(n), seed=ev.seed, progress=True, desc=f"t2i samples ({name} phrasings)",
                            prompts=prompts) if n else None
        samples[name] = (prompts, batch)
        m[f"{name}_samples"] = n
        m.update({f"{k}_{name}": v for k, v in _judged(judge, batch, classes, attrs, thresholds).items()})
    scorer = RealTestFeatures(cfg.data_root).scorer_for(ev.test_images)  # the class-conditional FID's reference
    m["fid_held_out"] = scorer.score(samples["held_out"][1].images, "inception (t2i samples)")
    m["fid_reference_images"] = ev.test_images
    if "fid_real_floor" in main_metrics:
        m["fid_real_floor"] = main_metrics["fid_real_floor"]
    prompts, batch = samples["held_out"]
    return m, {"prompts": prompts, "images": batch.images}
