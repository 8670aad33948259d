"""Fixtures shared by several test modules."""

from __future__ import annotations

import pytest
import torch


def pytest_sessionstart(session):
    """On a machine that has not built the compiled kernels yet, build them side by side before the tests (each
    takes most of a minute, which the tests would otherwise wait for one at a time at first use)."""
    from zoo.blocks import compiled

    if compiled.mode() != "off" and compiled.compiler() is not None:
        compiled.build_all()


@pytest.fixture
def deterministic():
    """One intra-op thread and deterministic algorithms: reruns on CPU are bit-identical."""
    threads, flag = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    yield
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(flag)


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op thread for a module: tiny models run fastest so, and a busy machine does not stall OpenMP."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
