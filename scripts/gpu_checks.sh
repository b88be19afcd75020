#!/usr/bin/env bash
# Issue 30 on a GPU machine (one H100/H200), in one command. Each stage has a time limit inside one overall
# budget (GPU_CHECKS_SECONDS, default 450) and its log and files land in the results folder as it ends, so a run
# cut short keeps what it measured. Stages, most needed first (GPU_CHECKS_STAGES picks some, e.g. "tests"):
#   machine   GPU, driver, versions of torch/timm/triton
#   bench     fcvit_b12 (plain and optimised) beside poolformer_s12, convnext_tiny, resnet50 and swin_tiny: bf16
#             autocast, channels_last, batch 256 at 224 px, inference and train step in interleaved rounds (median
#             and IQR), peak CUDA memory, and torch.profiler's operator table per model and mode (profiles/)
#   triton    fcvit_b12 with its depth-wise convolutions on the Triton kernels against cuDNN, same settings
#   train     the main job on the GPU (`fcvit train --device cuda`), where Fashion-MNIST is found
#   tests     the CUDA tests (tests/test_cuda.py: training under autocast and torch.compile, the attention models;
#             the Triton kernels, fast paths and ACmix tests that need a GPU)
#   compiled  fcvit_b12 and poolformer_s12 under torch.compile, inference
# It runs on the machine's own torch/timm (nothing is installed: fcvit is put on PYTHONPATH). Results go to
# gpu-results/ (GPU_CHECKS_DIR); where $OUT is set (the device tool), the folder is packed into
# $OUT/gpu-results.tar.gz after every stage, with stages.txt beside it. Fashion-MNIST for the main job:
# $FASHION_MNIST_DIR, else data/fashion-mnist in the repository (git-ignored: `mkdir -p data && cp -r
# /usr/share/datasets/fashion-mnist data/`, then carry data/fashion-mnist), else Debian's folder.
set -uo pipefail
cd "$(dirname "$0")/.."
res="${GPU_CHECKS_DIR:-gpu-results}"
budget="${GPU_CHECKS_SECONDS:-450}"
stages="${GPU_CHECKS_STAGES:-machine bench triton train tests compiled}"
mkdir -p "$res"
: >"$res/stages.txt"
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1

pack() {
    [ -n "${OUT:-}" ] || return 0
    tar czf "$OUT/gpu-results.tar.gz" -C "$res" . && cp "$res/stages.txt" "$OUT/"
}

# stage NAME LIMIT COMMAND...: COMMAND for at most LIMIT seconds (less if the budget has less left), its output
# in NAME.txt; one line per stage in stages.txt (exit 124: cut at its limit)
stage() {
    local name=$1 limit=$2 left t0 rc
    shift 2
    [[ " $stages " == *" $name "* ]] || return 0
    left=$((budget - SECONDS))
    ((left < limit)) && limit=$left
    if ((limit < 20)); then
        echo "$name: not run (the budget of ${budget} s is spent)" | tee -a "$res/stages.txt"
        return 0
    fi
    t0=$SECONDS
    timeout --kill-after=10 "$limit" "$@" >"$res/$name.txt" 2>&1
    rc=$?
    echo "$name: exit $rc after $((SECONDS - t0)) s (limit $limit s)" | tee -a "$res/stages.txt"
    tail -n 12 "$res/$name.txt"
    pack
}

fashion_mnist() {
    local d
    for d in "${FASHION_MNIST_DIR:-}" data/fashion-mnist /usr/share/datasets/fashion-mnist; do
        [ -n "$d" ] && [ -f "$d/train-images-idx3-ubyte.gz" ] && echo "$d" && return 0
    done
    return 1
}

gpu=(--device cuda --dtype bf16 --channels-last --batch-size 256 --img-size 224 --warmup 3 --steps 4)
stage machine 30 bash -c "date -u; nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv; \
python -c \"import torch, timm, triton; print('torch', torch.__version__, 'CUDA', torch.version.cuda, 'timm', \
timm.__version__, 'triton', triton.__version__)\""
stage bench 200 python -m fcvit.cli bench fcvit_b12 fcvit_b12:plain poolformer_s12 convnext_tiny resnet50 \
    swin_tiny_patch4_window7_224 --reference poolformer_s12 --mode both --rounds 7 "${gpu[@]}" \
    --json "$res/bench.json" --markdown "$res/bench.md" --profile "$res/profiles"
stage triton 90 python -m fcvit.cli bench fcvit_b12 fcvit_b12:triton --reference fcvit_b12 --mode both \
    --rounds 5 "${gpu[@]}" --json "$res/triton.json" --markdown "$res/triton.md"
if data=$(fashion_mnist); then
    stage train 120 python -m fcvit.cli train --device cuda --data-dir "$data" --output "$res/runs" \
        --experiment main-gpu
else
    echo "train: not run (no Fashion-MNIST: FASHION_MNIST_DIR, data/fashion-mnist)" | tee -a "$res/stages.txt"
fi
# test modules whose imports are missing here (pycocotools, ...) hold no CUDA tests: run the others anyway
stage tests 200 python -m pytest -q -rs -p no:cacheprovider --continue-on-collection-errors \
    -k "cuda or gpu or hopper" tests
stage compiled 150 python -m fcvit.cli bench fcvit_b12 poolformer_s12 --compile --mode infer --rounds 5 \
    --no-memory "${gpu[@]}" --json "$res/compiled.json" --markdown "$res/compiled.md"
cat "$res/stages.txt"
