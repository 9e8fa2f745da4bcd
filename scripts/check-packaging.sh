#!/usr/bin/env bash
# Build the sdist and the wheel with the oldest setuptools pyproject.toml allows, inspect
# them, install the wheel alone in a fresh venv and use it (scripts/check_packaging.py
# says what is checked). Needs python3 with venv, and the package index for the
# dependencies. Takes well under two minutes.
set -euo pipefail
cd "$(dirname "$0")/.."
# The project's venv (scripts/setup.sh) has a recent pip, which installs into the
# throwaway venvs without bootstrapping pip in each; any python3 with venv works too.
if [ -z "${PYTHON:-}" ]; then
    PYTHON=python3
    if [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python; fi
fi
exec "$PYTHON" scripts/check_packaging.py "$@"
