#!/usr/bin/env bash
# The whole test suite under the library versions of the GPU machines (torch 2.11, torchvision 0.26; Triton 3.6
# comes with that torch), on this machine's CPU, in a second virtual environment (.venv-gpu-versions, ~5 GB)
# made by the same set-up script with those versions pinned. CI runs it after the README's test command: code
# must run on both.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=.venv-gpu-versions
mkdir -p "$venv"
printf 'torch==2.11.0\ntorchvision==0.26.0\n' >"$venv/constraints.txt"
FCVIT_VENV="$venv" PIP_CONSTRAINT="$PWD/$venv/constraints.txt" bash scripts/setup.sh
"$venv/bin/python" -c "import torch, torchvision; print('torch', torch.__version__, 'torchvision', torchvision.__version__)"
"$venv/bin/python" -m pytest -q -rs "$@"
