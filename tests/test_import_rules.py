"""The package's layers: every import (module level or inside a function) goes to a lower layer, never up and never
sideways, so no two packages import each other and the shared code imports no command."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "fcvit"

# lowest first; a package may import from the layers before its own only
LAYERS = (
    ("errors", "runtime"),  # what every layer may raise or set
    ("layers", "data"),  # the papers' modules; images and loaders
    ("models",),  # the model families, registered with timm
    ("accel",),  # fcvit.optimize's faster modules
    ("engine",),  # what the commands share: checkpoints, run dirs, logging, distributed, config, rng
    ("hub",),  # the models' front door: create, load, create_pretrained
    ("train", "dense", "analysis", "export"),  # the commands
    ("bench", "study"),  # commands that run other commands' code (bench exports to ONNX, study trains/analyses)
    ("cli",),  # the command line, which imports the commands by name when they run
)
LAYER_OF = {name: i for i, names in enumerate(LAYERS) for name in names}


def _package(module: str) -> str | None:
    """``fcvit.train.train`` -> ``train``; the package root ``fcvit`` -> None."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else None


def _module(path: Path) -> str:
    """``src/fcvit/train/train.py`` -> ``fcvit.train.train``; a package's ``__init__.py`` -> the package."""
    parts = path.relative_to(SRC).with_suffix("").parts
    return ".".join(("fcvit", *(parts[:-1] if parts[-1] == "__init__" else parts)))


def _imports(text: str, module: str, is_package: bool = False) -> list[tuple[str, int]]:
    """(imported fcvit module, line) of every import in the source ``text`` of ``module`` (a package's own
    ``__init__`` when ``is_package``: its relative imports start from the package itself)."""
    found = []
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, ast.ImportFrom) and node.level:
            base = module.split(".") if is_package else module.split(".")[:-1]
            base = base[: len(base) - node.level + 1]
            target = ".".join(base + ([node.module] if node.module else []))
            targets = [target] if node.module else [f"{target}.{a.name}" for a in node.names]
            found += [(t, node.lineno) for t in targets]
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("fcvit"):
            found.append((node.module, node.lineno))
        elif isinstance(node, ast.Import):
            found += [(a.name, node.lineno) for a in node.names if a.name.startswith("fcvit")]
    return found


def test_every_package_has_a_layer():
    packages = {p.stem if p.is_file() else p.name for p in SRC.iterdir() if p.suffix == ".py" or p.is_dir()}
    packages -= {"__init__", "__pycache__"}
    assert packages <= set(LAYER_OF), f"put {sorted(packages - set(LAYER_OF))} into LAYERS"


def test_imports_go_down_only():
    wrong = []
    for path in sorted(SRC.rglob("*.py")):
        own = _package(_module(path))
        if own is None:  # the package root: `import fcvit` gives the public API of several layers
            continue
        for target, line in _imports(path.read_text(), _module(path), path.name == "__init__.py"):
            other = _package(target)
            if other is None and target == "fcvit":
                wrong.append(f"{path.relative_to(SRC)}:{line} imports the package root `fcvit`")
            elif other is not None and other != own and LAYER_OF[other] >= LAYER_OF[own]:
                wrong.append(f"{path.relative_to(SRC)}:{line} ({own}) imports {target} ({other}), not below it")
    assert not wrong, "\n".join(wrong)


def test_the_rule_sees_every_kind_of_import():
    """Relative, absolute and function-level imports (the commands import lazily to keep --help fast) count."""
    text = "import fcvit.hub\nfrom .. import models\ndef f():\n    from ..train.train import train\n"
    found = _imports(text, "fcvit.engine.config")
    assert ("fcvit.hub", 1) in found and ("fcvit.models", 2) in found and ("fcvit.train.train", 4) in found
