#!/usr/bin/env bash
# Create .venv (if missing) and install vlalign with its dev tools. torch/torchvision are pinned to a pair that
# installs and imports on CPU-only machines; pyproject.toml keeps broad ranges for users.
set -euo pipefail
cd "$(dirname "$0")/.."
export PIP_DISABLE_PIP_VERSION_CHECK=1
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
.venv/bin/pip install -q torch==2.14.1 torchvision==0.29.1 2>&1 | grep -v "^WARNING: Location" || true
.venv/bin/pip install -q -e ".[dev]" 2>&1 | grep -v "^WARNING: Location" || true
.venv/bin/python -c "import torch, torchvision, vlalign; print(f'vlalign {vlalign.__version__} ready (torch {torch.__version__})')"
