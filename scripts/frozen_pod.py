"""A pod that hangs (SIGSTOP: its TCP stays open, nothing answers): what each remedy gives.

Four pod processes on 127.0.0.2 to 127.0.0.5; for each setup a fresh sync
channel, one pod stopped with SIGSTOP, and 8 threads of 40 unary calls with
1 s deadlines. Prints, per setup, the calls that failed, the latencies of
those that succeeded, and whether outlier detection ejected the stopped pod.
The table in docs/service-config.md ("A pod that hangs") comes from this
script. Loopback only.

    PYTHONPATH=. python scripts/frozen_pod.py
"""

from __future__ import annotations

import json
import os
import signal
import statistics
import threading
import time
from typing import Any

import grpc

import grpclb
from grpclb.testing import PodFleet, echo_pb2, echo_pb2_grpc

THREADS, CALLS, DEADLINE_S = 8, 40, 1.0
UNARY = {"service": "grpclb.testing.Echo", "method": "Unary"}


def method_config(**policy: Any) -> str:
    return json.dumps({"methodConfig": [{"name": [UNARY], **policy}]})


RETRY_WITH_ATTEMPT_TIMEOUT = {
    "maxAttempts": 3,
    "initialBackoff": "0.01s",
    "maxBackoff": "0.05s",
    "backoffMultiplier": 2,
    "retryableStatusCodes": ["UNAVAILABLE"],
    "perAttemptRecvTimeout": "0.2s",
}
HEDGING = {"maxAttempts": 2, "hedgingDelay": "0.1s", "nonFatalStatusCodes": ["UNAVAILABLE"]}
SETUPS: dict[str, dict[str, Any]] = {
    "grpclb's defaults (least_request)": {},
    'policy="round_robin"': {"policy": "round_robin"},
    "retryPolicy, perAttemptRecvTimeout 0.2s": {
        "service_config": method_config(retryPolicy=RETRY_WITH_ATTEMPT_TIMEOUT)
    },
    "hedgingPolicy, hedgingDelay 0.1s": {"service_config": method_config(hedgingPolicy=HEDGING)},
}


def run_setup(fleet: PodFleet, target: str, settings: dict[str, Any]) -> str:
    with grpclb.channel(target, **settings) as channel:
        channel.wait_for_endpoints(min_ready=len(fleet), timeout=10)
        stub = echo_pb2_grpc.EchoStub(channel)
        frozen = fleet[1]
        latencies: list[float] = []
        failed: list[str] = []
        lock = threading.Lock()

        def work() -> None:
            for _ in range(CALLS):
                started = time.monotonic()
                try:
                    stub.Unary(echo_pb2.EchoRequest(), timeout=DEADLINE_S)
                except grpc.RpcError as error:
                    with lock:
                        failed.append(error.code().name)
                    continue
                with lock:
                    latencies.append(time.monotonic() - started)

        os.kill(frozen.pid, signal.SIGSTOP)
        try:
            threads = [threading.Thread(target=work) for _ in range(THREADS)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(CALLS * DEADLINE_S * 4)
            ejected = [e.address for e in channel.stats().endpoints if e.ejections]
        finally:
            os.kill(frozen.pid, signal.SIGCONT)
    latencies.sort()
    p99 = latencies[max(int(len(latencies) * 0.99) - 1, 0)] if latencies else float("nan")
    p50 = statistics.median(latencies) if latencies else float("nan")
    return (
        f"failed {len(failed)} of {THREADS * CALLS}, p50 {p50 * 1000:.1f} ms, "
        f"p99 {p99 * 1000:.0f} ms, stopped pod ejected: {frozen.address in ejected}"
    )


def main() -> None:
    with PodFleet(4, processes=True) as fleet:
        target = "ipv4:" + ",".join(fleet.addresses)
        for name, settings in SETUPS.items():
            print(f"{name}: {run_setup(fleet, target, settings)}", flush=True)


if __name__ == "__main__":
    main()
