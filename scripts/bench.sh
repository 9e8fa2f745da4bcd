#!/usr/bin/env bash
# The benchmark suite: every scenario against its baseline, in one run; writes
# docs/benchmarks.md and its plots (docs/benchmarks/*.png).
#   scripts/bench.sh            the whole suite (under 15 minutes on 2 cores)
#   scripts/bench.sh --quick    a smoke run (under 2 minutes), written to build/bench/
#   scripts/bench.sh --only overhead --only native   some scenarios (also to build/bench/)
#   scripts/bench.sh --list     the scenarios
# Sets up like scripts/setup.sh: a .venv with grpclb and its bench extra (VENV=path picks
# another virtual environment). The big-fleet scenarios (churn, fleet) name their pods with
# a real DNS server, Debian's dnsmasq-base, installed here as scripts/setup.sh does.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v dnsmasq >/dev/null 2>&1 && [ ! -x /usr/sbin/dnsmasq ]; then
    echo "bench: installing Debian's dnsmasq-base (the big-fleet scenarios' DNS server)" >&2
    SUDO=""
    [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq dnsmasq-base >/dev/null
fi

VENV="${VENV:-.venv}"
PYTHON="${PYTHON:-python3}"
if [ ! -x "$VENV/bin/python" ]; then
    echo "bench: creating $VENV" >&2
    "$PYTHON" -m venv "$VENV"
fi
stamp="$VENV/.grpclb-bench-installed"
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
    if ! "$VENV/bin/python" -c 'import grpc, grpc_health, google.protobuf, dns, tenacity, opentelemetry, matplotlib, numpy' 2>/dev/null \
        || [ ! -x "$VENV/bin/py-spy" ]; then
        echo "bench: installing grpclb and its bench extra into $VENV" >&2
        "$VENV/bin/python" -m pip install -q --upgrade pip >/dev/null
        "$VENV/bin/python" -m pip install -q -e ".[bench]"
    fi
    touch "$stamp"
fi
# The repository's own grpclb, whatever the environment has installed.
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
exec "$VENV/bin/python" -m benchmarks "$@"
