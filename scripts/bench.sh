#!/usr/bin/env bash
# The benchmark suite: every scenario against its baseline, in one run; writes
# docs/benchmarks.md and its plots (docs/benchmarks/*.png).
#   scripts/bench.sh            the whole suite (under 15 minutes on 2 cores)
#   scripts/bench.sh --quick    a smoke run (under 2 minutes), written to build/bench/
#   scripts/bench.sh --only overhead --only native   some scenarios (also to build/bench/)
#   scripts/bench.sh --only proxy --update   one scenario, its section replaced in docs/
#   scripts/bench.sh --list     the scenarios
# Sets up like scripts/setup.sh: a .venv with grpclb and its bench extra (VENV=path picks
# another virtual environment).
# The proxy scenario needs Debian's nginx and HAProxy: installed here when missing (as root
# or through sudo), never started as system services; the benchmark starts its own on
# loopback ports with configs in a temporary directory, and the trap below stops any it
# leaves behind.
# The big-fleet scenarios (churn, fleet) name their pods with
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

# Whether this run includes the proxy scenario: a whole run, or --only naming it.
wants_proxies() {
    local only="" prev=""
    for arg in "$@"; do
        case "$arg" in
            --list | -h | --help) return 1 ;;
            --only=*) only="$only,${arg#--only=}" ;;
        esac
        [ "$prev" = "--only" ] && only="$only,$arg"
        prev="$arg"
    done
    [ -z "$only" ] || [[ ",$only," == *",proxy,"* ]]
}

have() { command -v "$1" >/dev/null 2>&1 || [ -x "/usr/sbin/$1" ]; }

# Debian's packages, without starting their services: a policy-rc.d answering 101 ("action
# forbidden") is what invoke-rc.d and deb-systemd-invoke consult during the install.
install_proxies() {
    local packages=() sudo="" policy=/usr/sbin/policy-rc.d placed=0
    have nginx || packages+=(nginx)
    have haproxy || packages+=(haproxy)
    [ ${#packages[@]} -eq 0 ] && return 0
    if [ "$(id -u)" -ne 0 ]; then
        if ! command -v sudo >/dev/null 2>&1; then
            echo "bench: ${packages[*]} missing; install them or run as root or with sudo" >&2
            exit 1
        fi
        sudo="sudo"
    fi
    echo "bench: installing Debian's ${packages[*]} (the proxy comparison)" >&2
    $sudo apt-get update -qq
    if [[ " ${packages[*]} " == *" nginx "* ]] && apt-cache show nginx-light >/dev/null 2>&1; then
        packages=("${packages[@]/#nginx/nginx-light}")
    fi
    if [ ! -e "$policy" ]; then
        printf '#!/bin/sh\nexit 101\n' | $sudo tee "$policy" >/dev/null
        $sudo chmod 755 "$policy"
        placed=1
    fi
    local status=0
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends \
        "${packages[@]}" >/dev/null || status=$?
    [ "$placed" -eq 0 ] || $sudo rm -f "$policy"
    [ "$status" -eq 0 ] || exit "$status"
}

# Stops, by their process group, the proxies a benchmark left running (it stops its own
# when it can; this covers a benchmark killed outright). Each group leader's id is in a
# *.pgid file there; only a leader that is still nginx or haproxy is signalled.
PROXY_DIR=""
stop_proxies() {
    [ -n "$PROXY_DIR" ] && [ -d "$PROXY_DIR" ] || return 0
    local file pgid comm signalled=0
    for signal in TERM KILL; do
        for file in "$PROXY_DIR"/*.pgid; do
            [ -f "$file" ] || continue
            pgid="$(cat "$file")"
            comm="$(cat "/proc/$pgid/comm" 2>/dev/null || true)"
            case "$comm" in
                nginx | haproxy) kill "-$signal" -- "-$pgid" 2>/dev/null && signalled=1 ;;
            esac
        done
        [ "$signalled" -eq 0 ] && break
        [ "$signal" = KILL ] || sleep 0.5
    done
    rm -rf "$PROXY_DIR"
}

if wants_proxies "$@"; then
    install_proxies
    PROXY_DIR="$(mktemp -d -t grpclb-bench-proxies.XXXXXX)"
    export BENCHMARK_PROXY_DIR="$PROXY_DIR"
    trap stop_proxies EXIT
    trap 'exit 130' INT
    trap 'exit 143' TERM
fi

# The repository's own grpclb, whatever the environment has installed.
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
status=0
"$VENV/bin/python" -m benchmarks "$@" || status=$?
exit "$status"
