#!/usr/bin/env bash
# Create .venv and install the project with its test and Ray extras. torch goes first, pinned: 2.13.0 is the
# CPU build; an unpinned torch would pull a multi-GB CUDA build (see pyproject.toml).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3.11}
command -v "$PYTHON" >/dev/null || PYTHON=python3
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q torch==2.13.0
.venv/bin/python -m pip install -q -e ".[dev,ray]"
# datatrove's extra brings fasttext-numpy2-wheel, whose `fasttext` module fails at random under numpy 2; both
# packages install that module, so lay fasttext-community's over it whatever order pip chose
.venv/bin/python -m pip install -q --force-reinstall --no-deps fasttext-community==0.11.9
echo "setup: .venv ready ($(.venv/bin/python --version))"
