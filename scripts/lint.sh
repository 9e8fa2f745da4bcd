#!/usr/bin/env bash
# ruff and mypy, as CI runs them.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
.venv/bin/ruff check grpclb tests benchmarks examples
.venv/bin/ruff format --check grpclb tests benchmarks examples
.venv/bin/mypy
