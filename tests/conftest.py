"""Suite-wide test settings."""

import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread():
    """The tests' tensors are tiny: one intra-op thread is as fast, and immune to OpenMP
    spin-waits when other processes share the CPU (2-10x slowdowns measured). Restored after."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
