"""A pytest plugin that runs timm's own ``tests/test_models.py`` on the models fcvit registers, and only on them.

Loaded with ``-p timm_tests_plugin`` (scripts/timm_model_tests.sh): it imports fcvit before timm's test module
builds its parameter lists from ``timm.list_models()``, then keeps the test cases whose ``model_name`` is one of
fcvit's models.
"""

from __future__ import annotations

import timm
from timm.models import model_entrypoint

import fcvit  # noqa: F401  (registers the models)

FCVIT_MODELS = {name for name in timm.list_models() if model_entrypoint(name).__module__.startswith("fcvit.")}


def pytest_collection_modifyitems(config, items):
    keep, drop = [], []
    for item in items:
        params = getattr(getattr(item, "callspec", None), "params", {})
        name = str(params.get("model_name", "")).split(".")[0]
        (keep if name in FCVIT_MODELS else drop).append(item)
    config.hook.pytest_deselected(items=drop)
    items[:] = keep
