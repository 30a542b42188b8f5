#!/usr/bin/env bash
# Wheels for a GPU machine that cannot reach PyPI, fetched here:   bash scripts/gpu_wheels.sh [PYTHON_VERSION]
#
# scripts/gpu_check.sh installs what csm_worker imports and the GPU image lacks from .whl/ when that folder
# exists. An image with CUDA torch, transformers, safetensors, tokenizers, huggingface-hub, numpy and pytest
# (as this project's lent H200s have, Python 3.12) lacks only soundfile and soxr (and soundfile's cffi and
# pycparser). Keep .whl/ out of git (echo /.whl/ >> .git/info/exclude) and send it with the tree.
set -euo pipefail
cd "$(dirname "$0")/.."
PYV=${1:-3.12}
python3 -m pip download -q --no-deps --only-binary=:all: --python-version "$PYV" --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform any -d .whl soundfile soxr cffi pycparser
ls -1 .whl
