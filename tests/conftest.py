"""Suite-wide test settings."""

import signal

import pytest
import torch


def pytest_configure(config):
    """Ctrl-C as from a terminal, also when pytest was started in the background of a script.

    POSIX shells start a background job with SIGINT ignored; lowbit's commands then keep it ignored
    (as Python does), and the tests that send a real SIGINT to a run would see it do nothing. Python
    handlers are not inherited across exec: the runs the tests start get SIGINT's default too.
    """
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


@pytest.fixture(autouse=True)
def _one_thread():
    """The tests' tensors are tiny: one intra-op thread is as fast, and immune to OpenMP
    spin-waits when other processes share the CPU (2-10x slowdowns measured). Restored after."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
