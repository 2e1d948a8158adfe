"""Reading EMA weights out of a training checkpoint (``fae.training.checkpoint.load_ema_weights``)."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from fae.errors import CheckpointError
from fae.training.checkpoint import CheckpointManager, load_ema_weights, model_state
from fae.training.ema import EMA


def _trained(seed: int = 0) -> tuple[nn.Module, EMA]:
    """A small net with a buffer, and an EMA whose shadow lags its weights after a few steps."""
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
    ema = EMA(net, decay=0.5, warmup=False)
    with torch.no_grad():
        for _ in range(3):
            for p in net.parameters():
                p.add_(torch.randn_like(p))
            ema.update()
        net[1].running_mean.fill_(7.0)  # a buffer: comes from the model state, not the EMA
    return net, ema


def _save(folder, net: nn.Module, ema: dict) -> str:
    state = {"models": {"generator": model_state(net)}, "ema": ema}
    return str(CheckpointManager(folder).save(state, 5))


def test_loaded_weights_are_the_ema_copy_not_the_raw_model(tmp_path):
    net, ema = _trained()
    path = _save(tmp_path, net, {"generator": ema.state_dict()})
    fresh = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
    load_ema_weights(fresh, path, "generator")
    for name, p in fresh.named_parameters():
        assert torch.equal(p, ema.shadow[name])
        assert not torch.equal(p, dict(net.named_parameters())[name])  # the raw weights differ
    assert torch.equal(fresh[1].running_mean, torch.full((4,), 7.0))


def test_a_checkpoint_without_ema_is_an_error_naming_the_file(tmp_path):
    net, _ = _trained()
    path = _save(tmp_path, net, {})  # trained with train.ema_decay: null
    with pytest.raises(CheckpointError, match="step-00000005.pt.*no EMA weights of 'generator'"):
        load_ema_weights(nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4)), path, "generator")


def test_a_checkpoint_without_the_model_is_an_error(tmp_path):
    net, ema = _trained()
    path = _save(tmp_path, net, {"generator": ema.state_dict()})
    with pytest.raises(CheckpointError, match="no model 'decoder'"):
        load_ema_weights(net, path, "decoder")
