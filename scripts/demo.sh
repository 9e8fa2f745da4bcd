#!/usr/bin/env bash
# Set everything up, then run the demo: pods and DNS on loopback, calls through
# a plain grpcio channel and through grpclb with each policy.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
exec .venv/bin/python -m grpclb demo "$@"
