"""Shared fixtures of the test suite."""
from __future__ import annotations

import pytest
import torch


@pytest.fixture
def one_thread():
    """One intra-op thread for the test: tiny matrices on a shared 2-core machine only add
    spin-wait contention with a second thread (measured up to 30x slower under load). Modules opt
    in with ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
