"""Fixtures shared by the test modules."""

from __future__ import annotations

import pytest
from train_utils import one_thread


@pytest.fixture
def torch_one_thread():
    """Torch on one intra-op thread for the test (see :func:`train_utils.one_thread`); modules that train
    models ask for it with ``pytestmark = pytest.mark.usefixtures("torch_one_thread")``."""
    with one_thread():
        yield
