"""Shared fixtures of the test suite."""
from __future__ import annotations

import pytest

from fae.distributed import torch_threads
from tiny import tiny_fae_with_pixel_decoder


@pytest.fixture
def one_thread():
    """One intra-op thread for the test: tiny matrices on a shared 2-core machine only add
    spin-wait contention with a second thread (measured up to 30x slower under load). Modules opt
    in with ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    with torch_threads(1):
        yield


@pytest.fixture(autouse=True)
def no_user_inception_weights(monkeypatch):
    """Tests choose their Inception network themselves: a user's $FAE_INCEPTION_WEIGHTS (which
    switches ``fae eval fid`` to the network with logits) must not leak into them."""
    monkeypatch.delenv("FAE_INCEPTION_WEIGHTS", raising=False)


@pytest.fixture(scope="session", autouse=True)
def shared_eval_cache(tmp_path_factory):
    """The evaluation cache the demo and the experiments share (``fae.demo.shared_eval``: judges,
    test-image features) lives in one session folder, never in the working directory's runs/_eval;
    a test that counts what gets computed points $FAE_EVAL_CACHE at its own folder."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("FAE_EVAL_CACHE", str(tmp_path_factory.mktemp("eval_cache")))
        yield


@pytest.fixture(scope="session")
def tiny_fae_export(tmp_path_factory):
    """Read-only export folder of ``tiny.tiny_fae_with_pixel_decoder()`` (FAE + pixel decoder +
    unit latent statistics), written once per session. Tests that edit an export copy it first."""
    return tiny_fae_with_pixel_decoder().save_pretrained(tmp_path_factory.mktemp("tiny") / "fae")
