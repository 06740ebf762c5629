"""Shared fixtures."""

import pytest


@pytest.fixture
def single_thread():
    """One torch intra-op thread for the test (small dense products are faster and steadier so on a
    shared 2-core machine); the previous setting is restored afterwards."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
