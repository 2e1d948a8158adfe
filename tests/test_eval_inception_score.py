"""Inception Score: closed forms, ADM's split rule, our 1008-class InceptionV3 (key/shape check on a
random state dict with the real names; pool and spatial features equal the TorchScript's when it
carries the TorchScript's weights) and IS through ``fae eval fid``."""
import numpy as np
import pytest
import torch

from fae.errors import DataError, WeightsNotFoundError
from fae.evaluation.inception_score import inception_score, split_scores
from fae.evaluation.inception_v3 import (NUM_LOGITS, WEIGHTS_ENV, InceptionV3, InceptionWithLogits, check_state,
                                         load_scoring_network)

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py

# A few entries of pt_inception-2015-12-05-6726825d.pth (torchvision Inception3 names, fc 2048 -> 1008)
REAL_KEYS = {"Conv2d_1a_3x3.conv.weight": (32, 3, 3, 3), "Conv2d_1a_3x3.bn.running_var": (32,),
             "Mixed_5b.branch_pool.conv.weight": (32, 192, 1, 1), "Mixed_6b.branch7x7_2.conv.weight": (128, 128, 1, 7),
             "Mixed_6e.branch7x7dbl_5.conv.weight": (192, 192, 1, 7), "Mixed_7a.branch3x3_2.conv.weight": (320, 192, 3, 3),
             "Mixed_7b.branch3x3dbl_1.conv.weight": (448, 1280, 1, 1),
             "Mixed_7c.branch3x3_2b.conv.weight": (384, 384, 3, 1), "Mixed_7c.branch_pool.bn.bias": (192,),
             "fc.weight": (1008, 2048), "fc.bias": (1008,)}


def adm_inception_score(probs: np.ndarray, split_size: int) -> float:
    """ADM evaluator's formula (consecutive splits of ``split_size``), written out in NumPy."""
    scores = []
    for i in range(0, len(probs), split_size):
        part = probs[i:i + split_size]
        kl = part * (np.log(part) - np.log(part.mean(0, keepdims=True)))
        scores.append(np.exp(kl.sum(1).mean()))
    return float(np.mean(scores))


def test_closed_forms():
    assert inception_score(torch.zeros(100, NUM_LOGITS))[0] == pytest.approx(1.0)  # uniform -> 1
    same = torch.randn(1, NUM_LOGITS).expand(50, -1)  # every sample the same distribution -> 1
    assert inception_score(same)[0] == pytest.approx(1.0)
    k = 7
    one_hot = torch.eye(k).repeat(10, 1)  # each of the 10 splits holds the k classes once
    assert split_scores(one_hot).tolist() == pytest.approx([k] * 10)
    mean, std = inception_score(100.0 * one_hot)  # near one-hot logits: exp(-100) terms vanish
    assert mean == pytest.approx(k, rel=1e-9) and std == pytest.approx(0.0, abs=1e-9)
    halves = torch.cat([torch.eye(2)[[0]].repeat(5, 1), torch.eye(2)[[1]].repeat(5, 1)]).repeat(10, 1)
    assert inception_score(1e3 * halves)[0] == pytest.approx(2.0)  # two certain classes, half each


def test_splits_match_adm_on_random_logits():
    logits = torch.randn(500, NUM_LOGITS, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 3
    probs = torch.softmax(logits, 1).numpy()
    assert inception_score(logits)[0] == pytest.approx(adm_inception_score(probs, 50), rel=1e-10)
    assert inception_score(logits, splits=1)[0] == pytest.approx(adm_inception_score(probs, 500), rel=1e-10)
    with pytest.raises(DataError, match="N >= splits = 10"):
        inception_score(logits[:9])


def random_state(seed: int = 0, counters: bool = True) -> dict[str, torch.Tensor]:
    """A random state dict for the 1008-class InceptionV3 (positive running variances)."""
    torch.manual_seed(seed)
    state = InceptionV3().state_dict()
    for key, value in state.items():
        if key.endswith("running_var"):
            state[key] = 0.5 + torch.rand_like(value)
        elif key.endswith(("running_mean", "bn.bias")):
            state[key] = 0.1 * torch.randn_like(value)
    return state if counters else {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}


def test_the_network_has_the_real_key_names_and_shapes():
    state = InceptionV3().state_dict()
    assert {k: tuple(state[k].shape) for k in REAL_KEYS} == REAL_KEYS
    weights = [k for k in state if not k.endswith("num_batches_tracked")]
    assert len(weights) == 94 * 5 + 2  # 94 conv + batch-norm units (4 bn tensors each) and fc
    assert not any(k.startswith("AuxLogits") for k in state)


def test_loading_checks_every_key_and_shape(tmp_path):
    path = tmp_path / "pt_inception.pth"
    torch.save(random_state(counters=False), path)  # counters absent: accepted
    net = InceptionWithLogits(path, channels_last=False)
    assert torch.equal(net.net.fc.weight, random_state()["fc.weight"])
    bad = random_state()
    del bad["Mixed_6d.branch1x1.bn.running_mean"]
    bad["fc.weight"] = torch.zeros(1000, 2048)  # the torchvision 1000-class head
    bad["AuxLogits.fc.weight"] = torch.zeros(1000, 768)
    with pytest.raises(WeightsNotFoundError) as error:
        check_state(bad, InceptionV3(), "bad.pth")
    message = str(error.value)
    assert "missing keys: Mixed_6d.branch1x1.bn.running_mean" in message
    assert "unexpected keys: AuxLogits.fc.weight" in message
    assert "fc.weight (1000, 2048) (expected (1008, 2048))" in message
    torch.save([1, 2], tmp_path / "list.pth")
    with pytest.raises(WeightsNotFoundError, match="not a state dict"):
        InceptionWithLogits(tmp_path / "list.pth")


def test_weights_from_the_config_or_the_environment(tmp_path, monkeypatch):
    from fae.evaluation.inception import InceptionFeatures

    path = tmp_path / "w.pth"
    torch.save(random_state(), path)
    monkeypatch.delenv(WEIGHTS_ENV, raising=False)
    assert isinstance(load_scoring_network(), InceptionFeatures)  # no file named: the TorchScript
    assert isinstance(load_scoring_network(path), InceptionWithLogits)
    monkeypatch.setenv(WEIGHTS_ENV, str(path))
    assert isinstance(load_scoring_network(), InceptionWithLogits)
    monkeypatch.setenv(WEIGHTS_ENV, str(tmp_path / "missing.pth"))
    with pytest.raises(WeightsNotFoundError, match=f"\\${WEIGHTS_ENV} names"):
        load_scoring_network()
    with pytest.raises(WeightsNotFoundError, match="config key 'inception_weights'"):
        load_scoring_network(tmp_path / "nope.pth")


def torchscript_as_state() -> dict[str, torch.Tensor]:
    """The TorchScript's conv / batch-norm tensors in our names (the library's mapping), a random fc."""
    from fae.evaluation.inception import _load_torchscript, torchscript_path
    from fae.evaluation.inception_net import state_from_torchscript

    theirs = _load_torchscript(str(torchscript_path())).net.layers.state_dict()
    ours = state_from_torchscript(theirs)
    assert len([k for k in ours if k.endswith(".conv.weight")]) == 94
    return {**random_state(), **ours}


def test_pool_and_spatial_equal_the_torchscript_with_its_weights(tmp_path):
    from fae.evaluation.inception import load_inception

    path = tmp_path / "from_torchscript.pth"
    torch.save(torchscript_as_state(), path)
    images = torch.randint(0, 256, (3, 3, 64, 64), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    images[0] = torch.linspace(0, 255, 64).round().to(torch.uint8)  # a smooth ramp beside the noise
    ours, reference = InceptionWithLogits(path)(images), load_inception(fast=False)(images)  # the TorchScript
    torch.testing.assert_close(ours["pool"], reference["pool"], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(ours["spatial"], reference["spatial"], rtol=1e-4, atol=1e-4)
    assert ours["logits"].shape == (3, NUM_LOGITS)


def test_fid_verb_reports_the_inception_score_with_weights(tmp_path):
    from fae.commands.eval import run_fid
    from fae.config import from_dict
    from fae.evaluation.config import FidConfig
    from fae.evaluation.features import compute_inception_stats
    from fae.evaluation.stats import write_sample_batch

    weights = tmp_path / "w.pth"
    torch.save(random_state(), weights)
    images = np.random.default_rng(0).integers(0, 256, (10, 32, 32, 3), dtype=np.uint8)  # 10 splits of 1
    stats = compute_inception_stats(images, InceptionWithLogits(weights), batch_size=10, progress=False)
    assert stats.logits.shape == (10, NUM_LOGITS)
    samples = write_sample_batch(tmp_path / "samples.npz", images, np.arange(10))
    ref = stats.save(tmp_path / "ref_stats.npz")  # statistics only: the reference needs no pass
    cfg = from_dict(FidConfig, {"samples": str(samples), "ref": str(ref), "metrics": [],  # IS alone
                                "progress": False, "inception_weights": str(weights), "batch_size": 4,
                                "out": str(tmp_path / "m.json")})
    result = run_fid(cfg)  # batches of 4 over the 10 samples: the same logits as one batch
    assert result["inception_score"] == pytest.approx(inception_score(stats.logits)[0], rel=1e-5)
    assert result["inception_score"] >= 1.0 and "inception_score_note" not in result and "fid" not in result
