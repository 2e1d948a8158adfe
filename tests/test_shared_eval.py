"""The evaluation cache the demo and every experiment share (``fae.demo.shared_eval``) and the
intervals on each score (``FIDScorer.fid_interval``, the demo's and the experiment's metrics).

A counting stand-in for the Inception network (a fixed linear map of the pixels, so each image's
features are known) shows what is computed once: test-image features are embedded once per image
in aligned batches, read back by a second reader, extended by the missing images only; a second
experiment reference calls neither the network nor the judge's training. The judge file the demo
uses is the one every arm of every shipped experiment uses.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from fae.config import SHIPPED_CONFIGS
from fae.data.fashion_mnist import FashionMNIST
from fae.demo.config import load_demo_config
from fae.demo.evaluate import judged, scored
from fae.demo.shared_eval import CACHE_ENV, RealTestFeatures, judge_path, judge_step
from fae.evaluation.fid import fid_from_features
from fae.evaluation.intervals import bootstrap_fid, wilson
from fae.evaluation.scorer import FIDScorer
from fae.experiment.config import Evaluation, load_experiment, resolve_arms
from fae.experiment.evaluate import reference

EXPERIMENTS = ("latent-space", "encoder", "latent-channels", "time-shift", "starflow")


class CountingNet:
    """Pool features = a fixed random projection of the pixels (so known per image); records the
    size of every batch it is asked to embed."""

    def __init__(self):
        self.weights = torch.randn(28 * 28, 2048, generator=torch.Generator().manual_seed(0)) / 28
        self.batches: list[int] = []

    def pool(self, images: torch.Tensor) -> torch.Tensor:
        return images.flatten(1).float() / 255 @ self.weights  # [B, 2048]

    def __call__(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        self.batches.append(len(images))
        return {"pool": self.pool(images), "spatial": torch.zeros(len(images), 2023)}


def counting_features(net: CountingNet, batch_size: int = 8, network: str = "counting") -> RealTestFeatures:
    return RealTestFeatures(scorer=FIDScorer(net=net, batch_size=batch_size, progress=False), network=network)


@pytest.fixture
def own_cache(tmp_path, monkeypatch):
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "eval"))
    return tmp_path / "eval"


def test_fid_interval_is_the_bootstrap_of_the_scored_features_and_brackets_the_fid():
    rng = np.random.default_rng(0)
    real = rng.normal(size=(400, 64))
    scorer = FIDScorer().use_reference(real)
    near, far = rng.normal(0.1, 1.0, size=(120, 64)), rng.normal(0.6, 1.0, size=(120, 64))
    intervals = {}
    for name, features in (("near", near), ("far", far)):
        fid = scorer.fid(features)
        lo, hi = intervals[name] = scorer.fid_interval(features)
        assert lo < fid < hi
        assert (lo, hi) == bootstrap_fid(features, real.mean(axis=0), np.cov(real, rowvar=False))
    # |mean shift|^2 = 64 * 0.6^2 = 23 against 64 * 0.1^2 = 0.64: the intervals do not overlap
    assert intervals["near"][1] < intervals["far"][0]
    gap = far.mean(axis=0) - real.mean(axis=0)  # FID = |mean gap|^2 + a Bures term >= 0
    assert gap @ gap == pytest.approx(64 * 0.36, rel=0.15) and scorer.fid(far) >= gap @ gap


def test_demo_scores_carry_their_intervals_from_one_inception_pass():
    net = CountingNet()
    images = FashionMNIST("test").images[:60]
    scorer = FIDScorer(net=net, batch_size=20, progress=False).use_reference(net.pool(images[:40]).numpy())
    m = scored(scorer, images[40:60], "fid_cfg", "samples")
    assert net.batches == [20]  # 20 samples: one pass for the FID and its interval
    assert m["fid_cfg"] == pytest.approx(fid_from_features(net.pool(images[40:60]).numpy(), net.pool(images[:40]).numpy()))
    assert m["fid_cfg_ci"][0] < m["fid_cfg"] < m["fid_cfg_ci"][1]

    class Judge:  # right on the first 7 of 10
        def accuracy(self, images, labels):
            return 0.7

    acc = judged(Judge(), images[:10], torch.zeros(10), "class_accuracy")
    assert acc == {"class_accuracy": 0.7, "class_accuracy_ci": list(wilson(7, 10))}
    assert acc["class_accuracy_ci"][0] == pytest.approx(0.3968, abs=1e-4)  # Wilson 7/10, closed form


def test_test_features_are_embedded_once_in_aligned_batches_and_shared(own_cache):
    images = FashionMNIST("test").images
    net = CountingNet()
    real = counting_features(net)
    first = real.first(20)
    assert net.batches == [8, 8, 8]  # up to the next whole batch: images 0-23
    np.testing.assert_array_equal(first, net.pool(images[:20]).numpy())
    assert np.array_equal(real.first(12), first[:12]) and net.batches == [8, 8, 8]
    files = list(own_cache.glob("test-features-*.pt"))
    assert len(files) == 1

    again = CountingNet()
    reader = counting_features(again)  # e.g. an experiment after the demo
    np.testing.assert_array_equal(reader.first(20), first)
    assert again.batches == []
    more = reader.first(30)  # only images 24-31 are new
    assert again.batches == [8]
    np.testing.assert_array_equal(more, net.pool(images[:30]).numpy())
    assert reader.floor(10, 20) == fid_from_features(more[10:30], more[:10])  # the floor's argument order

    other = CountingNet()
    counting_features(other, network="another network").first(5)  # another network: its own entry
    assert other.batches == [8] and len(list(own_cache.glob("test-features-*.pt"))) == 2


def test_a_second_experiment_reference_trains_and_embeds_nothing(own_cache):
    cfg, _ = load_demo_config(None, quick=True, overrides=["eval.classifier_steps=3",
                                                           "eval.classifier_train_images=64"])
    ev = Evaluation(reference_images=16, fid_samples=8)
    net = CountingNet()
    ref = reference(cfg, ev, counting_features(net))
    assert sum(net.batches) == 24 and judge_path(cfg).is_file()
    images = FashionMNIST("test").images
    expected = fid_from_features(net.pool(images[16:24]).numpy(), net.pool(images[:16]).numpy())
    assert ref.floor == pytest.approx(expected, rel=1e-12)
    pool = net.pool(images[:24]).numpy()  # the floor's interval: its 8 real images resampled, the reference fixed
    moments = pool[:16].astype(np.float64).mean(axis=0), np.cov(pool[:16].astype(np.float64), rowvar=False)
    assert ref.floor_ci == pytest.approx(bootstrap_fid(pool[16:], *moments), rel=1e-12)
    assert ref.floor_ci[0] < ref.floor < ref.floor_ci[1]
    stamp = judge_path(cfg).stat().st_mtime_ns

    again = CountingNet()
    second = reference(cfg, ev, counting_features(again))
    assert again.batches == [] and judge_path(cfg).stat().st_mtime_ns == stamp
    assert judge_step(cfg) == "skipped (outputs valid)"
    assert (second.floor, second.floor_ci, second.key, second.judge_real) == \
        (ref.floor, ref.floor_ci, ref.key, ref.judge_real)
    np.testing.assert_array_equal(second.scorer.reference_features(), net.pool(images[:16]).numpy())


@pytest.mark.parametrize("quick", [False, True])
def test_every_shipped_experiment_arm_finds_the_demos_judge(quick):
    demo, _ = load_demo_config(None, quick=quick, overrides=[])
    expected = judge_path(demo)
    for name in EXPERIMENTS:
        path = SHIPPED_CONFIGS / "experiments" / f"{name}.yaml"
        exp, rest = load_experiment(path, quick)
        arms, _ = resolve_arms(exp, path, quick, rest)
        assert {judge_path(arm.config) for arm in arms} == {expected}, name
