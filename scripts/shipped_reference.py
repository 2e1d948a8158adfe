#!/usr/bin/env python3
"""Make the evaluation files the package ships (src/fae/demo/reference): the demo's judge and the
Inception pool features of the test images its FID reference and real-vs-real floor read.

    python scripts/shipped_reference.py          # ~2.5 min on 2 CPU cores; run it alone

Everything is computed from scratch by the code the demo runs (an empty evaluation cache in a
temporary folder, the shipped files switched off), then written with the content keys the cache
uses, so the demo takes them only where its settings, the dataset's bytes and the Inception file
are the same. Run it again after changing the judge's settings, the demo's test_images, the
Inception path or its CPU batch size (tests/test_shipped_reference.py fails until then).
"""
from __future__ import annotations

import datetime
import json
import os
import sys
import tempfile
from pathlib import Path

import torch

from fae.data.fashion_mnist import FashionMNIST
from fae.demo import shared_eval
from fae.demo.config import load_demo_config
from fae.evaluation.inception import torchscript_path
from fae.evaluation.pixel_classifier import PixelClassifier
from fae.freshness import identity
from fae.io import atomic_save_json, atomic_save_safetensors, atomic_write


def main(folder: Path = shared_eval.SHIPPED) -> Path:
    cfg, _ = load_demo_config(None, quick=False, overrides=[])
    ev = cfg.eval
    with tempfile.TemporaryDirectory() as cache:
        os.environ[shared_eval.CACHE_ENV] = cache
        os.environ[shared_eval.SHIPPED_ENV] = "off"
        shared_eval.judge_step(cfg)
        judge_bytes = shared_eval.judge_path(cfg).read_bytes()
        judge = PixelClassifier.load(shared_eval.judge_path(cfg))
        test = FashionMNIST("test", root=cfg.data_root)
        accuracy = judge.accuracy(test.images, test.labels)

        real = shared_eval.RealTestFeatures(cfg.data_root)
        needed = ev.test_images * (2 if ev.real_floor else 1)
        features = torch.from_numpy(real.first(real.whole_batches(needed)))  # the whole batches it embeds
        feature_key = real.key()

    atomic_write(folder / "judge.pt", lambda f: f.write(judge_bytes))
    atomic_save_safetensors({"features": features}, folder / "test-features.safetensors")
    manifest = {
        "made_by": "scripts/shipped_reference.py",
        "date": datetime.date.today().isoformat(),
        "judge": {"file": "judge.pt", "key": shared_eval.judge_key(ev, cfg.data_root),
                  "train_images": ev.classifier_train_images, "steps": ev.classifier_steps,
                  "test_accuracy": accuracy, "test_images": len(test.labels)},
        "test_features": {"file": "test-features.safetensors", "key": feature_key,
                          "rows": len(features), "inception_sha256": identity(torchscript_path()),
                          "batch_size": real.scorer.batch_size},
    }
    atomic_save_json(manifest, folder / "manifest.json")
    print(f"wrote {folder}: judge ({accuracy:.2%} on the {len(test.labels)} test images), "
          f"features of the first {len(features)} test images")
    return folder


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else shared_eval.SHIPPED)
