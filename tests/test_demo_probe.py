"""The demo's probe step (``fae.demo.evaluate.probe_metrics``) on a tiny FAE: the same numbers as the
linear-probe path it replaced, and its saved head reproduces them through ``fae eval probe --head``."""
from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch

from fae.cli import main
from fae.data.fashion_mnist import FashionMNIST
from fae.demo.evaluate import probe_metrics
from fae.evaluation.linear_head import LinearHead
from fae.evaluation.probe import linear_probe
from tiny import tiny_fae

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def test_demo_probe_is_the_zero_shot_protocol(tmp_path, capsys):
    fae = tiny_fae().eval()
    train, test = FashionMNIST("train", limit=80), FashionMNIST("test", limit=30)
    with torch.no_grad():
        train_x, test_x = fae.tokens_from(train.images), fae.tokens_from(test.images)  # [n, 16, 64]
        x_hat = fae.decode_features(fae.encode(test_x))
    from fae.evaluation.probe_features import probe_features

    z_train, z_test = (probe_features(fae, t, ("latent",), batch_size=16)["latent"] for t in (train_x, test_x))
    ev = SimpleNamespace(batch_size=16, probe_epochs=20)
    probes, latent_probe = probe_metrics(fae, (train_x, train.labels), (test_x, test.labels), x_hat, ev,
                                         tmp_path / "probe_head.pth")
    # the numbers of the code it replaced: the raw head scored on raw and on reconstructed features
    old = lambda tr, te: linear_probe(tr, train.labels, te, test.labels, epochs=20)["top1"]  # noqa: E731
    assert probes["probe_raw"] == old(train_x.mean(1), test_x.mean(1)) > 0.3
    assert probes["probe_reconstructed"] == old(train_x.mean(1), x_hat.mean(1))
    assert probes["probe_latent"] == old(z_train, z_test) == latent_probe(z_test, test.labels)
    head = LinearHead.load(tmp_path / "probe_head.pth")
    assert (head.in_features, head.num_classes) == (64, 10)

    fae.save_pretrained(tmp_path / "fae")  # the same head through the CLI reproduces both rows
    assert main(["eval", "probe", "--head", str(tmp_path / "probe_head.pth"), "--fae", str(tmp_path / "fae"),
                 "data.split=test", "test_limit=30", "progress=false", f"out={tmp_path / 'p.json'}"]) == 0
    result = json.loads(capsys.readouterr().out.splitlines()[0])
    assert result["top1_raw"] == pytest.approx(probes["probe_raw"])
    assert result["top1_reconstructed"] == pytest.approx(probes["probe_reconstructed"])
