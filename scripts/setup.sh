#!/usr/bin/env bash
# Set up a fresh Debian/Ubuntu machine: the offline default data set (Debian's
# dataset-fashion-mnist) and a virtual environment .venv with the package installed.
# TORCH_SPEC picks the PyTorch build (default: the CPU build torch==2.13.0); on a GPU
# machine use e.g. TORCH_SPEC="torch==2.14.1" (PyPI's CUDA build), see README.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! dpkg -s dataset-fashion-mnist >/dev/null 2>&1; then
    SUDO=""
    if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
    $SUDO apt-get install -y -qq dataset-fashion-mnist \
        || { $SUDO apt-get update -qq && $SUDO apt-get install -y -qq dataset-fashion-mnist; }
fi

PYTHON="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install -q "${TORCH_SPEC:-torch==2.13.0}"
.venv/bin/python -m pip install -q -e ".[dev]"
echo "setup done: .venv/bin/implicit-sparsity is ready"
