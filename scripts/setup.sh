#!/usr/bin/env bash
# Create .venv and install difflab into it, with the right torch build for this machine.
#
# Why not just `pip install -e .`: a bare `torch` requirement resolves to a multi-GB CUDA build on Linux.
# On a machine with no NVIDIA GPU we install the CPU build first (pinned to 2.13.0, taken from the PyTorch
# CPU index or a local wheel); with a GPU we install the default (CUDA) build. A torch already present in
# the venv is kept, so a user who brought their own CUDA build keeps it.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${DIFFLAB_VENV:-.venv}
PYTHON=${PYTHON:-python3}
TORCH_VERSION=${DIFFLAB_TORCH_VERSION:-2.13.0}
extras=${1:-}

if [ ! -x "$VENV/bin/python" ]; then
    "$PYTHON" -m venv "$VENV"
fi
pip=("$VENV/bin/python" -m pip --quiet)

if "$VENV/bin/python" -c "import torch" 2>/dev/null; then
    echo "setup: keeping installed torch $("$VENV/bin/python" -c 'import torch; print(torch.__version__)')"
elif command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
    echo "setup: NVIDIA GPU found, installing torch==$TORCH_VERSION (CUDA build)"
    "${pip[@]}" install "torch==$TORCH_VERSION"
else
    echo "setup: no NVIDIA GPU, installing torch==$TORCH_VERSION (CPU build)"
    "${pip[@]}" install "torch==$TORCH_VERSION" --extra-index-url https://download.pytorch.org/whl/cpu 2>&1 \
        | grep -v -e "Retrying" -e "is ignored" || true
    # -W ignore: numpy is not installed yet, and torch warns about it on import
    "$VENV/bin/python" -W ignore -c "import torch; assert not torch.version.cuda, 'a CUDA build of torch was installed'"
fi

if [ -n "$extras" ]; then
    "${pip[@]}" install -e ".[$extras]" 2>&1 | grep -v -e "is ignored" || true
else
    "${pip[@]}" install -e . 2>&1 | grep -v -e "is ignored" || true
fi
"$VENV/bin/python" -c "import difflab, torch; print(f'setup: difflab {difflab.__version__} with torch {torch.__version__}')"
