#!/usr/bin/env bash
# ruff and mypy, as CI runs them.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
paths=()
for p in grpclb tests benchmarks examples; do [ -e "$p" ] && paths+=("$p"); done
.venv/bin/ruff check "${paths[@]}"
.venv/bin/ruff format --check "${paths[@]}"
.venv/bin/mypy
.venv/bin/python -m grpclb.tools.docgen --check

# Packaging, as CI checks it: built with the oldest allowed setuptools, installed alone.
scripts/check-packaging.sh
