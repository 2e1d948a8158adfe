"""What the demo's evaluation and every experiment's share, computed once per content: the judge
(the pixel classifier) and the Inception pool features of the Fashion-MNIST test split.

Every FID reference set and every real-vs-real floor of the demo and of the experiments is a run
of test images (the first R; the N after them), so their features are slices of one file holding
the features of the first K test images, extended when a caller needs more. An image's Inception
features do not depend on the rest of its batch (measured on this CPU: bitwise equal in a batch of
16, of 8, and with shifted batch boundaries), so a slice equals the features of that set computed
alone and every FID keeps its digits; the file still grows in whole aligned batches, so its rows
never depend on the order in which callers asked.

Where (one rule for the demo and every experiment): ``$FAE_EVAL_CACHE``, else ``runs/_eval`` under
the working directory, beside the default ``runs/demo`` and ``runs/experiments`` (``make clean``
removes it). Entries are named by their content key (``fae.freshness``): the judge by its training
settings and the bytes of the training split, the features by the bytes of the test split and of
the Inception network. Changed data or settings get a new entry; nothing is keyed on a path.

Shipped with the package (``fae/demo/reference``, written by ``scripts/shipped_reference.py``): the
demo's judge and the features of the test images its FID reference and floor read, as ADM ships its
reference batches. They were computed by this module's own code and are used only where their
recorded content key equals the key computed here and now (same settings, same dataset bytes, same
Inception file and path); then they seed the cache instead of ~150 s of CPU work, and they make the
judge one fixed instrument on every machine. Any other key computes as before, and so does every
key when ``$FAE_EVAL_SHIPPED`` is ``off`` (to check them, or to make them again).
"""
from __future__ import annotations

import json
import os
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file

from fae import freshness
from fae.data.fashion_mnist import FashionMNIST, idx_files
from fae.errors import DataError
from fae.evaluation.inception import fast_path_default, torchscript_path
from fae.evaluation.pixel_classifier import ClassifierConfig, PixelClassifier, train_pixel_classifier
from fae.evaluation.scorer import FIDScorer
from fae.io import atomic_torch_save, atomic_write

CACHE_ENV = "FAE_EVAL_CACHE"
SHIPPED_ENV = "FAE_EVAL_SHIPPED"  # "off": compute what the package ships
DEFAULT_CACHE = Path("runs") / "_eval"
INCEPTION_CPU_BATCH = 16  # on a 2-core CPU ~15% faster than batches of 50-100 (bench/inception_throughput.py)
_NAME_DIGITS = 16  # hex digits of a content key in an entry's name


SHIPPED = Path(__file__).parent / "reference"  # the judge and test features the package ships
SHIPPED_MANIFEST = SHIPPED / "manifest.json"  # per entry: file, key, and how it was made


def cache_dir() -> Path:
    """The shared evaluation cache: ``$FAE_EVAL_CACHE``, else ``runs/_eval`` (working directory)."""
    return Path(os.environ.get(CACHE_ENV) or DEFAULT_CACHE)


def shipped_entries() -> dict:
    """The manifest of the shipped reference files ({} when the package ships none, or when
    ``$FAE_EVAL_SHIPPED`` is ``off``)."""
    if os.environ.get(SHIPPED_ENV, "").strip().lower() == "off":
        return {}
    try:
        return json.loads(SHIPPED_MANIFEST.read_text())
    except (OSError, ValueError):
        return {}


def shipped(entry: str, key: str) -> Path | None:
    """The shipped file of ``entry`` ("judge" or "test_features") when it was made under ``key``."""
    record = shipped_entries().get(entry) or {}
    path = SHIPPED / str(record.get("file", ""))
    return path if record.get("key") == key and path.is_file() else None


# ------------------------------------------------------------------------------------------ the judge


def judge_key(ev, data_root: str | None) -> str:
    """Content key of the judge that ``ev`` (the demo's eval settings) asks for: its training
    settings and the bytes of the training split it learns from."""
    settings = {"train_images": ev.classifier_train_images,
                "classifier": asdict(ClassifierConfig(steps=ev.classifier_steps))}
    return freshness.content_key(settings, idx_files("train", data_root))


def judge_path(cfg) -> Path:
    """The judge's weights file for ``cfg`` (a demo or arm config) in the shared cache."""
    return cache_dir() / f"judge-{judge_key(cfg.eval, cfg.data_root)[:_NAME_DIGITS]}" / "classifier.pt"


def judge_step(cfg) -> str:
    """Train the pixel classifier on real training pixels unless the shared cache holds one trained
    with these settings on these bytes (then: "skipped (outputs valid)") or the package ships one
    (then it is copied into the cache)."""
    ev, path = cfg.eval, judge_path(cfg)
    key = judge_key(ev, cfg.data_root)
    source = shipped("judge", key)

    def write() -> None:
        if source is not None:
            atomic_write(path, lambda f: f.write(source.read_bytes()))
            return
        train = FashionMNIST("train", root=cfg.data_root, limit=ev.classifier_train_images)
        train_pixel_classifier(train.images, train.labels, ClassifierConfig(steps=ev.classifier_steps)).save(path)

    status = freshness.produce(path.parent, key, path.is_file, write, "pixel classifier")
    if source is not None and not status.startswith("skipped"):
        return "copied from the package (the shipped judge of these settings and data)"
    return status


def load_judge(cfg) -> PixelClassifier:
    """The judge of ``cfg`` (trained first when the cache lacks it)."""
    judge_step(cfg)
    return PixelClassifier.load(judge_path(cfg))


# ------------------------------------------------------------------------------------------ test features


class RealTestFeatures:
    """Inception pool features of the first images of the Fashion-MNIST test split, kept in
    ``cache_dir()/test-features-<key>.pt`` and extended on demand; FID references and
    real-vs-real floors are slices of them.

    Args:
        data_root: the Fashion-MNIST folder (None: the default one).
        scorer: the scorer whose network embeds images (default: the ADM TorchScript on the CPU in
            batches of ``INCEPTION_CPU_BATCH``); its reference is set by :meth:`scorer_for`.
        network: what identifies that network in the key (default: the TorchScript file's sha256;
            pass a name for any other network).
    """

    def __init__(self, data_root: str | None = None, scorer: FIDScorer | None = None, network: str | None = None):
        self.data_root = data_root
        self.scorer = scorer or FIDScorer(batch_size=INCEPTION_CPU_BATCH)
        self.network = network
        self._held: np.ndarray | None = None  # what the file holds, once read

    def key(self) -> str:
        """Content key: the test split's bytes, the network and how it runs."""
        network = self.network or freshness.identity(torchscript_path())
        path = "fast" if fast_path_default() else "plain"  # the two agree to ~3e-6, not bitwise
        settings = {"features": "pool", "network": network, "inception_path": path, "device": str(self.scorer.device),
                    "batch_size": self.scorer.batch_size}
        return freshness.content_key(settings, idx_files("test", self.data_root))

    def path(self) -> Path:
        return cache_dir() / f"test-features-{self.key()[:_NAME_DIGITS]}.pt"

    def _read(self, key: str) -> np.ndarray:
        """The longer of what the cache holds for ``key`` and what the package ships for it (the
        same rows where both have them: one key, one computation), else nothing."""
        if self._held is None:
            self._held = np.zeros((0, 0), dtype=np.float32)
            if self.path().is_file():
                saved = torch.load(self.path(), weights_only=True)
                if saved.get("key") == key:
                    self._held = saved["features"].numpy()
            source = shipped("test_features", key)
            if source is not None:
                rows = load_file(source)["features"].numpy()
                if len(rows) > len(self._held):
                    self._held = rows
        return self._held

    def whole_batches(self, count: int) -> int:
        """``count`` rounded up to whole scorer batches: the rows :meth:`first` embeds and keeps."""
        batch = self.scorer.batch_size
        return -(-count // batch) * batch

    def first(self, count: int) -> np.ndarray:
        """Pool features [count, 2048] of the first ``count`` test images (computed only for the
        images the cache does not hold yet, in whole batches aligned to the batch size)."""
        key = self.key()
        held = self._read(key)
        if len(held) < count:
            images = FashionMNIST("test", root=self.data_root).images
            if count > len(images):
                raise DataError(f"the Fashion-MNIST test split has {len(images)} images, fewer than the "
                                f"{count} the FID reference and the real-vs-real floor need together")
            stop = min(len(images), self.whole_batches(count))
            new = self.scorer.features(images[len(held):stop], f"inception (test images {len(held)}-{stop})")
            held = new if len(held) == 0 else np.concatenate([held, new])
            atomic_torch_save({"key": key, "features": torch.from_numpy(held)}, self.path())
            self._held = held
        return held[:count]

    def scorer_for(self, reference_images: int) -> FIDScorer:
        """The scorer, scoring against the first ``reference_images`` test images."""
        return self.scorer.use_reference(self.first(reference_images))

    def floor_features(self, reference_images: int, n: int) -> np.ndarray:
        """Pool features [n, 2048] of the real-vs-real floor's images: test images ``[R, R + n)``."""
        return self.first(reference_images + n)[reference_images:]

    def floor(self, reference_images: int, n: int) -> float:
        """The real-vs-real FID: test images ``[R, R + n)`` against the first ``R`` (the floor an FID
        of ``n`` samples can reach against this reference)."""
        return self.scorer_for(reference_images).fid(self.floor_features(reference_images, n))
