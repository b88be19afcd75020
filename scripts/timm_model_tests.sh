#!/usr/bin/env bash
# timm's own model tests (tests/test_models.py from the source release of the installed timm) on every model
# fcvit registers: forward, backward, default configs, TorchScript, FX, features. Not part of the test suite
# (about an hour on 2 CPU cores); docs/benchmarks.md records the last run.
#   bash scripts/timm_model_tests.sh [pytest arguments, e.g. -k fcvit_tiny]
set -euo pipefail
cd "$(dirname "$0")/.."
py="${PYTHON:-$PWD/.venv/bin/python}"
version="$("$py" -c 'import timm; print(timm.__version__)')"
work="build/timm-$version"
if [ ! -f "$work/tests/test_models.py" ]; then
    mkdir -p build
    "$py" -m pip download -q --no-binary :all: --no-deps "timm==$version" -d build
    tar xzf "build/timm-$version.tar.gz" -C build
fi
cd "$work"
PYTHONPATH="$OLDPWD/scripts${PYTHONPATH:+:$PYTHONPATH}" OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}" \
    "$py" -m pytest -p timm_tests_plugin tests/test_models.py -q -rfEs -p no:cacheprovider "$@"
