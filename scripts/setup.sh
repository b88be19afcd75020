#!/usr/bin/env bash
# One-time set-up on a fresh Debian machine with Python 3.11 (safe to re-run: it skips what is done).
#  - a virtual environment in .venv (or $FCVIT_VENV) with fcvit and its test tools
#    (PyPI's torch, torchvision, timm, ...)
#  - Debian's dataset-fashion-mnist package (real Fashion-MNIST, used by `fcvit train`), where apt works
set -euo pipefail
cd "$(dirname "$0")/.."

if ! python3 -m venv --help >/dev/null 2>&1 || ! python3 -c "import ensurepip" >/dev/null 2>&1; then
    echo "setup: python3-venv is missing, installing it with apt-get" >&2
    apt-get update -q && apt-get install -y -q python3-venv
fi
venv="${FCVIT_VENV:-.venv}"  # another folder for a second environment (scripts/test_gpu_versions.sh)
[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
if ! "$venv/bin/python" -c "import fcvit, timm, pytest" >/dev/null 2>&1 || [ pyproject.toml -nt "$venv/.fcvit-installed" ]; then
    "$venv/bin/python" -m pip install -q --upgrade pip
    "$venv/bin/python" -m pip install -q -e ".[test]"  # pins, if any, come from pip's own PIP_CONSTRAINT
    touch "$venv/.fcvit-installed"
fi

if [ ! -e /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ]; then
    if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
        (apt-get update -q && apt-get install -y -q dataset-fashion-mnist) >/dev/null \
            || echo "setup: could not install dataset-fashion-mnist; Fashion-MNIST tests will skip" >&2
    else
        echo "setup: run 'sudo apt-get install dataset-fashion-mnist' for Fashion-MNIST" >&2
    fi
fi
