"""The pixel classifier that judges decoded images (fae.evaluation.pixel_classifier)."""
from __future__ import annotations

import pytest
import torch

from fae.data.fashion_mnist import FashionMNIST
from fae.errors import CheckpointError, DataError
from fae.evaluation.pixel_classifier import ClassifierConfig, PixelClassifier, train_pixel_classifier


@pytest.fixture(scope="module")
def judge():
    # A short run; tests/test_demo.py checks the demo's judge reaches >= 85% on real test images.
    train = FashionMNIST("train", limit=2000)
    return train_pixel_classifier(train.images, train.labels, ClassifierConfig(steps=60), progress=False)


def test_classifier_learns_from_pixels(judge):
    test = FashionMNIST("test", limit=1000)
    assert judge.accuracy(test.images, test.labels) >= 0.6  # chance: 0.1
    shuffled = test.labels[torch.randperm(1000, generator=torch.Generator().manual_seed(0))]
    assert judge.accuracy(test.images, shuffled) < 0.3


def test_classifier_is_seeded_and_round_trips(tmp_path, judge):
    images = FashionMNIST("test", limit=200).images
    path = judge.save(tmp_path / "judge.pt")
    again = PixelClassifier.load(path)
    assert torch.equal(again.predict(images), judge.predict(images))
    train = FashionMNIST("train", limit=500)
    a = train_pixel_classifier(train.images, train.labels, ClassifierConfig(steps=5), progress=False)
    b = train_pixel_classifier(train.images, train.labels, ClassifierConfig(steps=5), progress=False)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    (tmp_path / "bad.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="bad.pt"):
        PixelClassifier.load(tmp_path / "bad.pt")


def test_classifier_refuses_bad_training_data():
    images = FashionMNIST("train", limit=20).images
    labels = torch.arange(20) % 10
    with pytest.raises(DataError, match="uint8"):
        train_pixel_classifier(images.float(), labels, ClassifierConfig(steps=1), progress=False)
    with pytest.raises(DataError, match="one label each"):
        train_pixel_classifier(images, labels[:5], ClassifierConfig(steps=1), progress=False)
    with pytest.raises(DataError, match="labels must lie"):
        train_pixel_classifier(images, labels + 5, ClassifierConfig(steps=1), progress=False)
