"""Session-wide settings and fixtures of the whole suite.

Tests import their shared artefact builders from :mod:`tests.helpers` (``tests`` is a package;
pytest runs with ``--import-mode=importlib``, so nothing edits ``sys.path``).
"""
from __future__ import annotations

import os

import pytest

os.environ.setdefault("OMP_NUM_THREADS", "1")


@pytest.fixture(autouse=True)
def one_torch_thread():
    """Every test runs its PyTorch code on one thread: on a small CPU shared with other jobs,
    PyTorch's OpenMP threads wait on each other (100x slower); speed is not what tests measure.
    Module- and session-scoped fixtures run before this one and set it themselves."""
    try:
        import torch
    except ImportError:
        yield
        return
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
