"""Model tests run torch on a fixed number of threads (test_unet.py asks for 2 itself)."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True)
def _threads():
    # one thread: on a shared 2-core box, 2 OpenMP threads competing with other processes run ~50x slower
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
