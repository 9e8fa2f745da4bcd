#!/usr/bin/env bash
# Build the sdist and the wheel with the oldest setuptools pyproject.toml allows, inspect
# them, install the wheel alone in a fresh venv and use it (scripts/check_packaging.py
# says what is checked). Needs python3 with venv, and the package index for the
# dependencies. Takes well under two minutes.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
exec "$PYTHON" scripts/check_packaging.py "$@"
