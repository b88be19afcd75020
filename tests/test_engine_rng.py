"""fcvit.engine.rng: a block run under preserved_rng leaves every global generator where it found it."""

from __future__ import annotations

import contextlib
import random

import numpy as np
import pytest
import torch

from fcvit.engine.rng import preserved_rng, seed_everything


def _draws() -> tuple:
    return random.random(), float(np.random.rand()), float(torch.rand(1))


@pytest.mark.parametrize("raises", [False, True])
def test_preserved_rng_restores_python_numpy_and_torch(raises):
    seed_everything(3)
    expected = _draws()
    seed_everything(3)
    with contextlib.suppress(KeyboardInterrupt), preserved_rng():  # an interrupted block restores them too
        inside = _draws() + _draws()
        if raises:
            raise KeyboardInterrupt
    assert inside[:3] == expected  # the block itself drew from the generators
    assert _draws() == expected  # and after it they continue as if it had not run
