"""A pod SIGKILLed under 2,000 concurrent aio calls, repeated: how many runs fail a call?

The scenario of ``test_sigkill_during_2000_concurrent_calls_fails_only_refused_retries``
(tests/integration/test_aio.py), run ``--runs`` times (default 20), each on a
fresh fleet of three process pods behind the dnsmasq harness: round_robin,
the retry budget open (``retry_budget_percent=100``), 80 ms calls, and one
pod SIGKILLing itself as it starts the 20th call of its third (the pods'
``sigkill_at`` mode, exact under any load). With retries and an
open budget, a run should fail no call; a cut call that is not retried shows
up as a failure.

Each run is a child process with its own time limit, so a frozen event loop
counts as a failed run instead of hanging the script. Loopback only.

    PYTHONPATH=. python scripts/stress_sigkill.py [--runs 20] [--calls 2000]

Prints one line per run and a summary; exits 1 when any run failed a call.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import time
from collections import Counter
from typing import Any

RUN_LIMIT_S = 90.0  # one run's child process, from start to its report


async def scenario(where: str, victim: str, calls: int, budget: float, kill_after: int) -> Any:
    """One run, in the child: returns what the run saw, as a JSON-able dict."""
    import grpc
    import grpc.aio

    import grpclb.aio
    from grpclb.testing import echo_pb2, echo_pb2_grpc

    async def outcome(call: Any) -> str:
        try:
            return "ok " + str((await call).pod)
        except grpc.aio.AioRpcError as error:
            return f"{error.code().name}: {error.details()}"
        except BaseException as error:  # CancelledError included
            return type(error).__name__

    async with grpclb.aio.channel(
        where, policy="round_robin", retry_budget_percent=budget
    ) as channel:
        channel.get_state(try_to_connect=True)
        limit = time.monotonic() + 10
        while sum(e.state == "ready" for e in channel.stats().endpoints) < 3:
            if time.monotonic() > limit:
                raise RuntimeError("the pods never became ready")
            await asyncio.sleep(0.01)
        echo = echo_pb2_grpc.EchoStub(channel)  # type: ignore[no-untyped-call]
        started = time.monotonic()
        pending = [echo.Unary(echo_pb2.EchoRequest(sleep_ms=80), timeout=30) for _ in range(calls)]
        on_victim = channel.stats().by_address()[victim].calls  # picks happen at creation
        gathered = asyncio.gather(*(outcome(c) for c in pending))
        try:
            outcomes = await asyncio.wait_for(gathered, 40)
        finally:
            gathered.cancel()
        took = time.monotonic() - started
        stats = channel.stats()
    failed = Counter(o for o in outcomes if not o.startswith("ok "))
    return {
        "on_victim": on_victim,
        "unserved_at_kill": on_victim - kill_after,
        "failed": sum(failed.values()),
        "failures": dict(failed.most_common(3)),
        "retries": stats.retries,
        "retries_refused": stats.retries_refused,
        "seconds": round(took, 2),
    }


def child(argv: list[str]) -> None:
    where, victim, calls, budget, kill_after = argv
    found = asyncio.run(scenario(where, victim, int(calls), float(budget), int(kill_after)))
    print(json.dumps(found), flush=True)


def one_run(dns: Any, calls: int, budget: float, kill_after: int) -> dict[str, Any]:
    """Start three process pods, run the scenario in a child process, stop the pods."""
    from grpclb.testing import SERVICE_NAME, PodFleet

    fleet = PodFleet(3, processes=True)
    try:
        dns.set_records(SERVICE_NAME, [p.host for p in fleet])
        victim: Any = fleet[2]
        victim.set_mode("sigkill_at", kill_after)  # it SIGKILLs itself as that call starts
        command = [
            sys.executable,
            __file__,
            "--child",
            dns.target(SERVICE_NAME, fleet.port),
            victim.address,
            str(calls),
            str(budget),
            str(kill_after),
        ]
        try:
            done = subprocess.run(command, capture_output=True, timeout=RUN_LIMIT_S)
        except subprocess.TimeoutExpired:
            return {"failed": -1, "error": f"no report within {RUN_LIMIT_S:.0f} s (frozen?)"}
        lines = done.stdout.decode().strip().splitlines()
        if done.returncode != 0 or not lines:
            return {"failed": -1, "error": done.stderr.decode().strip()[-500:]}
        found: dict[str, Any] = json.loads(lines[-1])
        return found
    finally:
        fleet.stop_all()


def main() -> int:
    if sys.argv[1:2] == ["--child"]:
        child(sys.argv[2:])
        return 0
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--budget-percent", type=float, default=100.0)
    parser.add_argument(
        "--kill-after", type=int, default=20, help="calls the victim has started when killed"
    )
    args = parser.parse_args()

    from grpclb.testing import DnsServer

    bad = 0
    with DnsServer() as dns:
        for run in range(1, args.runs + 1):
            found = one_run(dns, args.calls, args.budget_percent, args.kill_after)
            bad += found["failed"] != 0
            print(f"run {run:2d}: {json.dumps(found)}", flush=True)
    print(f"runs with failed calls: {bad} of {args.runs}", flush=True)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
