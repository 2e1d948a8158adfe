"""The evaluation files the package ships (``fae/demo/reference``, ``scripts/shipped_reference.py``):
the demo's judge and the Inception features of its FID reference and floor images.

They are what this machine's code computes (a recomputed slice of the features agrees to 1e-4; the
judge scores the accuracy recorded beside it), the demo's settings still ask for them by key (a
settings change that leaves them unused fails here, not as a slower demo), they seed an empty
cache without computing anything, and any other key, or ``$FAE_EVAL_SHIPPED=off``, computes.
"""
from __future__ import annotations

import numpy as np
import pytest

from fae.data.fashion_mnist import FashionMNIST
from fae.demo import shared_eval
from fae.demo.config import load_demo_config
from fae.demo.shared_eval import (SHIPPED, SHIPPED_ENV, RealTestFeatures, judge_key, judge_path, judge_step,
                                  shipped, shipped_entries)
from fae.evaluation.pixel_classifier import PixelClassifier
from fae.evaluation.scorer import FIDScorer


@pytest.fixture
def demo_cfg():
    return load_demo_config(None, quick=False, overrides=[])[0]


@pytest.fixture
def empty_cache(tmp_path, monkeypatch):
    monkeypatch.setenv(shared_eval.CACHE_ENV, str(tmp_path / "eval"))
    return tmp_path / "eval"


def test_the_demo_asks_for_the_shipped_files_by_their_keys(demo_cfg):
    entries = shipped_entries()
    assert entries["judge"]["key"] == judge_key(demo_cfg.eval, demo_cfg.data_root)
    assert entries["test_features"]["key"] == RealTestFeatures(demo_cfg.data_root).key()
    # the FID reference (test_images) and the real-vs-real floor (the next test_images) are in it
    assert entries["test_features"]["rows"] >= 2 * demo_cfg.eval.test_images
    assert shipped("judge", entries["judge"]["key"]) == SHIPPED / "judge.pt"
    assert shipped("test_features", entries["test_features"]["key"]) == SHIPPED / "test-features.safetensors"


def test_the_shipped_features_are_what_the_inception_network_computes_here(demo_cfg):
    features = RealTestFeatures(demo_cfg.data_root)
    held = features.first(1008)  # served from the shipped file: nothing computed
    assert held.shape == (1008, 2048) and held.dtype == np.float32
    images = FashionMNIST("test", root=demo_cfg.data_root).images
    for start in (0, 992):  # the first and the last batch of 16
        again = FIDScorer(batch_size=16, progress=False).features(images[start:start + 16])
        np.testing.assert_allclose(held[start:start + 16], again, rtol=1e-4, atol=1e-6)


def test_the_shipped_judge_scores_its_recorded_accuracy(demo_cfg):
    record = shipped_entries()["judge"]
    judge = PixelClassifier.load(shipped("judge", record["key"]))
    test = FashionMNIST("test", root=demo_cfg.data_root)
    assert len(test.labels) == record["test_images"]
    # 10 images of 10000 of slack: another CPU's kernels may flip a near tie
    assert judge.accuracy(test.images, test.labels) == pytest.approx(record["test_accuracy"], abs=1e-3)
    assert record["test_accuracy"] > 0.85


def test_an_empty_cache_is_seeded_from_the_package_without_computing(demo_cfg, empty_cache, monkeypatch):
    def no_training(*args, **kwargs):
        raise AssertionError("the shipped judge should have been copied, not trained")

    monkeypatch.setattr(shared_eval, "train_pixel_classifier", no_training)
    assert judge_step(demo_cfg).startswith("copied from the package")
    assert judge_path(demo_cfg).read_bytes() == (SHIPPED / "judge.pt").read_bytes()
    assert judge_step(demo_cfg) == "skipped (outputs valid)"

    class NoNetwork:
        def __call__(self, images):
            raise AssertionError("the shipped features should have been read, not computed")

    features = RealTestFeatures(demo_cfg.data_root, scorer=FIDScorer(net=NoNetwork(), batch_size=16))  # the demo's key
    reference = features.first(2 * demo_cfg.eval.test_images)
    assert len(reference) == 2 * demo_cfg.eval.test_images
    assert not list(empty_cache.glob("test-features-*"))  # written only when extended


def test_other_settings_or_off_compute_as_before(demo_cfg, empty_cache, monkeypatch):
    trained = []

    def stand_in(images, labels, config):
        trained.append(config.steps)
        return PixelClassifier(config)

    monkeypatch.setattr(shared_eval, "train_pixel_classifier", stand_in)
    other, _ = load_demo_config(None, quick=False, overrides=["eval.classifier_steps=7"])
    assert shipped("judge", judge_key(other.eval, other.data_root)) is None
    assert judge_step(other) == "ran" and trained == [7]

    monkeypatch.setenv(SHIPPED_ENV, "off")
    assert shipped_entries() == {}
    assert judge_step(demo_cfg) == "ran" and trained == [7, demo_cfg.eval.classifier_steps]


def test_a_shorter_cache_entry_gives_way_to_the_shipped_rows(demo_cfg, empty_cache):
    """A cache written before the package shipped features (here: its first 32 rows) is extended
    from the shipped file, not by running Inception."""
    import torch

    from fae.io import atomic_torch_save

    features = RealTestFeatures(demo_cfg.data_root)
    shipped_rows = features.first(1008)
    atomic_torch_save({"key": features.key(), "features": torch.from_numpy(shipped_rows[:32].copy())}, features.path())

    class NoNetwork:
        def __call__(self, images):
            raise AssertionError("the shipped rows should have been read, not computed")

    reader = RealTestFeatures(demo_cfg.data_root, scorer=FIDScorer(net=NoNetwork(), batch_size=16))
    np.testing.assert_array_equal(reader.first(1000), shipped_rows[:1000])
