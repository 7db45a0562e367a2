"""Shared pytest fixtures."""
from __future__ import annotations

import os
import sys

import numpy as np
import pytest

# test helper modules (onnx_models.py, ...) import as top-level modules
sys.path.insert(0, os.path.dirname(__file__))


@pytest.fixture
def rng():
    """A seeded NumPy generator (the same numbers in every run)."""
    return np.random.default_rng(1234)


@pytest.fixture(scope="session")
def session_dir(tmp_path_factory):
    """A temporary directory shared by every test of the session (cached model files)."""
    return tmp_path_factory.mktemp("session")
