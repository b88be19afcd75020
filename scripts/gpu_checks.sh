#!/usr/bin/env bash
# What issue 6 needs from a GPU machine, in one command (about 10 minutes on one H100/H200):
#   1. the CUDA tests (fast paths, Triton kernels, ACmix on GPU) where pytest is installed;
#   2. the GPU targets: bf16 autocast, channels_last, batch 256 at 224 px, inference and train step, with a
#      fcvit_b12:triton row that weighs the Triton depth-wise kernels against cuDNN.
# It runs on the machine's own torch/timm (nothing is installed: fcvit is put on PYTHONPATH) and writes
# everything to $OUT (default: gpu-results/).
set -uo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-gpu-results}"
mkdir -p "$out"
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"

{
    date -u
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
    python -c "import torch, timm, triton; print('torch', torch.__version__, 'timm', timm.__version__, 'triton', triton.__version__)"
} 2>&1 | tee "$out/machine.txt"

if python -c "import pytest" 2>/dev/null; then
    # test modules whose imports are missing here (onnx, skimage, ...) hold no CUDA tests: run the others anyway
    python -m pytest -q -rs -p no:cacheprovider --continue-on-collection-errors -k "cuda or gpu or hopper" tests \
        2>&1 | tee "$out/pytest-cuda.txt"
else
    echo "pytest is not installed here: CUDA tests not run" | tee "$out/pytest-cuda.txt"
fi

gpu=(--device cuda --dtype bf16 --channels-last --batch-size 256 --img-size 224 --rounds 7 --warmup 3 --steps 5)
for mode in infer train; do
    python -m fcvit.cli bench fcvit_b12 fcvit_b12:triton poolformer_s12 convnext_tiny --mode "$mode" "${gpu[@]}" \
        --json "$out/bench-$mode.json" --markdown "$out/bench-$mode.md" 2>&1 | tee "$out/bench-$mode.txt"
done
