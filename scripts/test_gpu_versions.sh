#!/usr/bin/env bash
# The whole test suite under the library versions of the GPU machines (torch 2.11, torchvision 0.26; Triton 3.6
# comes with that torch), on this machine's CPU, in a second virtual environment (.venv-gpu-versions, ~5 GB).
# CI runs it after the README's test command: code must run on both.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=.venv-gpu-versions

[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
if ! "$venv/bin/python" -c "import fcvit, pytest" >/dev/null 2>&1 || [ pyproject.toml -nt "$venv/.fcvit-installed" ]; then
    "$venv/bin/python" -m pip install -q --upgrade pip
    printf 'torch==2.11.0\ntorchvision==0.26.0\n' >"$venv/constraints.txt"
    "$venv/bin/python" -m pip install -q -c "$venv/constraints.txt" -e ".[test]"
    touch "$venv/.fcvit-installed"
fi
"$venv/bin/python" -c "import torch, torchvision; print('torch', torch.__version__, 'torchvision', torchvision.__version__)"
"$venv/bin/python" -m pytest -q -rs "$@"
