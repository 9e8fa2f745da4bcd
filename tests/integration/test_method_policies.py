"""Per-method policies from the gRPC service config, executed by the call engine.

Real pods behind the real DNS server: a retryPolicy makes exactly its
maxAttempts, never nested inside gRPC's own retries or grpclb's channel-wide
ones; a hedgingPolicy cuts a slow or frozen pod's latency out of the tail; the
method's timeout and waitForReady apply; ``"retryPolicy": null`` turns
retries off for one method while others keep them.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import statistics
import threading
import time
from collections.abc import Callable
from typing import Any

import grpc
import pytest

import grpclb
import grpclb.aio
from grpclb.testing import SERVICE_NAME, PodFleet, echo_pb2
from tests.helpers import drive, serve, stub, until, wait_ready, wait_until

FleetFactory = Callable[..., PodFleet]
UNARY = {"service": "grpclb.testing.Echo", "method": "Unary"}
STREAM = {"service": "grpclb.testing.Echo", "method": "ServerStream"}


def config(*method_configs: dict[str, Any], **top: Any) -> str:
    return json.dumps({"methodConfig": list(method_configs), **top})


def retry_policy(max_attempts: int, codes: tuple[str, ...] = ("UNAVAILABLE",)) -> dict[str, Any]:
    return {
        "maxAttempts": max_attempts,
        "initialBackoff": "0.01s",
        "maxBackoff": "0.05s",
        "backoffMultiplier": 2,
        "retryableStatusCodes": list(codes),
    }


def calls_at(fleet: PodFleet) -> int:
    return sum(p.stats().calls for p in fleet)


def test_a_retry_policy_makes_exactly_max_attempts_through_grpc_options(
    pods: FleetFactory, dns_server: Any
) -> None:
    fleet, target = serve(pods, dns_server, 3)
    for pod in fleet:
        pod.set_mode("unavailable")
    option = ("grpc.service_config", config({"name": [UNARY], "retryPolicy": retry_policy(4)}))
    # grpclb's own default retries (2) must not multiply gRPC's: 4 attempts, not 12.
    with grpclb.channel(target, options=[option], retry_budget_min_concurrency=100) as channel:
        wait_ready(channel, 3)
        fleet.reset_stats()
        with pytest.raises(grpc.RpcError) as raised:
            stub(channel).Unary(echo_pb2.EchoRequest(), timeout=5)
        assert raised.value.code() is grpc.StatusCode.UNAVAILABLE
        assert calls_at(fleet) == 4
        fleet.reset_stats()
        future = stub(channel).Unary.future(echo_pb2.EchoRequest(), timeout=5)
        assert future.exception(timeout=5).code() is grpc.StatusCode.UNAVAILABLE
        assert calls_at(fleet) == 4
        fleet.reset_stats()
        # A method the config does not name keeps grpclb's channel-wide retries (1 + 2).
        with pytest.raises(grpc.RpcError):
            list(stub(channel).ServerStream(echo_pb2.EchoRequest(count=1), timeout=5))
        assert calls_at(fleet) == 3


def test_a_retry_policy_makes_exactly_max_attempts_in_asyncio(
    pods: FleetFactory, dns_server: Any
) -> None:
    fleet, target = serve(pods, dns_server, 3)
    for pod in fleet:
        pod.set_mode("unavailable")
    service_config = config({"name": [UNARY], "retryPolicy": retry_policy(4)})

    async def scenario() -> int:
        async with grpclb.aio.channel(
            target, service_config=service_config, retry_budget_min_concurrency=100
        ) as channel:
            await channel.channel_ready()
            await asyncio.to_thread(fleet.reset_stats)
            with pytest.raises(grpc.aio.AioRpcError):
                await stub(channel).Unary(echo_pb2.EchoRequest(), timeout=5)
            return await asyncio.to_thread(calls_at, fleet)

    assert asyncio.run(scenario()) == 4


def test_retry_policy_null_turns_retries_off_for_one_method_only(
    pods: FleetFactory, dns_server: Any
) -> None:
    fleet, target = serve(pods, dns_server, 3)
    for pod in fleet:
        pod.set_mode("unavailable")
    service_config = config({"name": [UNARY], "retryPolicy": None})
    with grpclb.channel(target, service_config=service_config, retries=2) as channel:
        wait_ready(channel, 3)
        fleet.reset_stats()
        with pytest.raises(grpc.RpcError):
            stub(channel).Unary(echo_pb2.EchoRequest(), timeout=5)
        assert calls_at(fleet) == 1
        fleet.reset_stats()
        with pytest.raises(grpc.RpcError):
            list(stub(channel).ServerStream(echo_pb2.EchoRequest(count=1), timeout=5))
        assert calls_at(fleet) == 3  # the other method keeps retries=2


def test_the_method_timeout_caps_the_call_deadline(pods: FleetFactory, dns_server: Any) -> None:
    _, target = serve(pods, dns_server, 2)
    service_config = config({"name": [UNARY], "timeout": "0.2s"})
    with grpclb.channel(target, service_config=service_config) as channel:
        wait_ready(channel, 2)
        started = time.monotonic()
        with pytest.raises(grpc.RpcError) as raised:
            stub(channel).Unary(echo_pb2.EchoRequest(sleep_ms=3000), timeout=10)
        took = time.monotonic() - started
    assert raised.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED
    assert took < 2.0, took


def test_wait_for_ready_from_the_method_config_waits_for_pods(
    pods: FleetFactory, dns_server: Any
) -> None:
    fleet = pods(1)
    target = dns_server.target(SERVICE_NAME, fleet.port)  # no records yet
    service_config = config({"name": [UNARY], "waitForReady": True})
    with grpclb.channel(target, service_config=service_config, **FAST_DNS) as channel:
        echo = stub(channel)
        time.sleep(0.3)  # the first (empty) answer is in: a plain call would fail now
        future = echo.Unary.future(echo_pb2.EchoRequest(), timeout=10)
        assert not future.done()
        dns_server.set_records(SERVICE_NAME, [p.host for p in fleet])
        assert future.result(timeout=10).pod == fleet[0].address


FAST_DNS = {"dns_refresh_interval": "0.2s", "dns_min_refresh_interval": "0.1s"}


def hedging(max_attempts: int = 2, delay: str = "0.1s") -> dict[str, Any]:
    return {
        "maxAttempts": max_attempts,
        "hedgingDelay": delay,
        "nonFatalStatusCodes": ["UNAVAILABLE"],
    }


def run_load(echo: Any, threads: int, calls: int, timeout: float) -> tuple[list[float], list[Any]]:
    latencies: list[float] = []
    errors: list[Any] = []
    lock = threading.Lock()

    def work() -> None:
        for _ in range(calls):
            started = time.monotonic()
            try:
                echo.Unary(echo_pb2.EchoRequest(), timeout=timeout)
            except grpc.RpcError as error:
                with lock:
                    errors.append(error)
                continue
            with lock:
                latencies.append(time.monotonic() - started)

    workers = [threading.Thread(target=work) for _ in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=120)
    return latencies, errors


def test_hedging_takes_a_slow_pod_out_of_the_tail(pods: FleetFactory, dns_server: Any) -> None:
    fleet, target = serve(pods, dns_server, 5)
    fleet[0].set_mode("slow", delay_ms=1000)
    service_config = config({"name": [UNARY], "hedgingPolicy": hedging()})
    with grpclb.channel(target, service_config=service_config, policy="round_robin") as channel:
        wait_ready(channel, 5)
        fleet.reset_stats()
        latencies, errors = run_load(stub(channel), threads=2, calls=100, timeout=5)
        attempts = calls_at(fleet)
    assert errors == []
    latencies.sort()
    p99 = latencies[int(len(latencies) * 0.99) - 1]
    per_call = attempts / len(latencies)
    print(f"hedging over a 1 s pod: p50 {statistics.median(latencies) * 1000:.1f} ms, "
          f"p99 {p99 * 1000:.1f} ms, {per_call:.3f} attempts per call")  # fmt: skip
    assert p99 < 0.9, p99  # never the slow pod's full second
    assert per_call <= 1.35, per_call


def load_with_a_frozen_pod(
    pods: FleetFactory, dns_server: Any, service_config: str
) -> tuple[list[float], list[Any], bool]:
    """8 threads of 40 calls (1 s deadlines) over 4 pods, one stopped with SIGSTOP: the
    latencies, the errors, and whether the stopped pod was ejected meanwhile."""
    fleet, target = serve(pods, dns_server, 4, processes=True)
    with grpclb.channel(target, service_config=service_config, policy="round_robin") as channel:
        wait_ready(channel, 4)
        frozen = fleet[1]
        os.kill(frozen.pid, signal.SIGSTOP)  # TCP stays open; nothing answers
        try:
            latencies, errors = run_load(stub(channel), threads=8, calls=40, timeout=1.0)
            ejected = any(
                e.ejections for e in channel.stats().endpoints if e.address == frozen.address
            )
        finally:
            os.kill(frozen.pid, signal.SIGCONT)
    return latencies, errors, ejected


def test_hedging_survives_a_frozen_pod(pods: FleetFactory, dns_server: Any) -> None:
    service_config = config({"name": [UNARY], "hedgingPolicy": hedging(max_attempts=3)})
    latencies, errors, _ = load_with_a_frozen_pod(pods, dns_server, service_config)
    assert errors == [], [e.code() for e in errors]
    assert len(latencies) == 320


def test_per_attempt_timeout_survives_a_frozen_pod_and_ejects_it(
    pods: FleetFactory, dns_server: Any
) -> None:
    policy = {**retry_policy(3), "perAttemptRecvTimeout": "0.2s"}
    service_config = config({"name": [UNARY], "retryPolicy": policy})
    latencies, errors, ejected = load_with_a_frozen_pod(pods, dns_server, service_config)
    assert errors == [], [e.code() for e in errors]
    assert len(latencies) == 320
    assert ejected  # charged for each timeout, then ejected
    assert max(latencies) < 1.0


@pytest.mark.parametrize("flavour", ["sync", "aio"])
@pytest.mark.parametrize("pod_count", [3, 1])
def test_hedges_that_all_reach_the_deadline_are_each_charged_to_their_pod(
    pods: FleetFactory, dns_server: Any, flavour: str, pod_count: int
) -> None:
    """No hedge answered and none was cancelled for another's answer: each attempt's own
    DEADLINE_EXCEEDED is its pod's, as a single attempt's would be, in both flavours; a pod
    that took every hedge (a wait_for_ready call, one READY pod) is charged for each, as
    gRPC's outlier detection counts attempts (A50)."""
    fleet, target = serve(pods, dns_server, pod_count)
    for pod in fleet:
        pod.set_mode("hang")  # answers only at the deadline
    service_config = config({"name": [UNARY], "hedgingPolicy": hedging(3, "0.05s")})
    request = echo_pb2.EchoRequest()

    def charged(channel: Any) -> int | None:
        stats = channel.stats()
        return None if stats.in_flight else sum(e.failures for e in stats.endpoints)

    if flavour == "sync":
        with grpclb.channel(target, service_config=service_config, policy="round_robin") as ch:
            wait_ready(ch, pod_count)
            with pytest.raises(grpc.RpcError) as raised:
                stub(ch).Unary(request, timeout=0.5, wait_for_ready=True)
            code = raised.value.code()
            failures = wait_until(lambda: charged(ch) is not None and charged(ch), 5)
    else:

        async def scenario() -> tuple[grpc.StatusCode, int]:
            async with grpclb.aio.channel(
                target, service_config=service_config, policy="round_robin"
            ) as ch:
                await ch.wait_for_endpoints(min_ready=pod_count, timeout=10)
                try:
                    await stub(ch).Unary(request, timeout=0.5, wait_for_ready=True)
                except grpc.aio.AioRpcError as error:
                    return error.code(), await until(lambda: charged(ch), 5)
                raise AssertionError("the call should have reached its deadline")

        code, failures = asyncio.run(asyncio.wait_for(scenario(), 30))
    assert code is grpc.StatusCode.DEADLINE_EXCEEDED
    assert failures == 3
    assert sum(p.stats().calls for p in fleet) == 3  # every hedge was sent


def test_hedging_in_asyncio_takes_a_slow_pod_out_of_the_tail(
    pods: FleetFactory, dns_server: Any
) -> None:
    fleet, target = serve(pods, dns_server, 5)
    fleet[0].set_mode("slow", delay_ms=1000)
    service_config = config({"name": [UNARY], "hedgingPolicy": hedging()})

    async def scenario() -> list[float]:
        async with grpclb.aio.channel(
            target, service_config=service_config, policy="round_robin"
        ) as channel:
            await channel.channel_ready()  # starts the channel's work in this loop
            for _ in range(250):
                if len([e for e in channel.stats().endpoints if e.state == "ready"]) == 5:
                    break
                await asyncio.sleep(0.02)
            echo = stub(channel)

            async def one() -> float:
                started = time.monotonic()
                await echo.Unary(echo_pb2.EchoRequest(), timeout=5)
                return time.monotonic() - started

            latencies: list[float] = []
            for _ in range(10):
                latencies += await asyncio.gather(*(one() for _ in range(10)))
            return latencies

    latencies = sorted(asyncio.run(scenario()))
    assert len(latencies) == 100
    assert latencies[-1] < 0.9, latencies[-5:]


def test_cancelling_a_hedged_asyncio_call_reaches_the_hedge_still_running(
    pods: FleetFactory, dns_server: Any
) -> None:
    """The latest hedge failed while an earlier one still runs: cancel() ends that one too."""
    fleet, target = serve(pods, dns_server, 2)
    fleet[0].set_mode("hang")  # answers at the deadline
    fleet[1].set_mode("unavailable")  # a non-fatal status: the hedge just fails
    service_config = config({"name": [UNARY], "hedgingPolicy": hedging(2, "0.05s")})

    async def scenario() -> list[tuple[bool, str]]:
        async with grpclb.aio.channel(
            target, service_config=service_config, policy="round_robin", consecutive_failures=0
        ) as channel:
            await channel.channel_ready()
            echo, seen = stub(channel), []
            for _ in range(6):
                call: Any = echo.Unary(echo_pb2.EchoRequest(), timeout=20)
                awaiting = asyncio.ensure_future(call)
                for _ in range(300):  # both attempts made: one hangs, one fails at once
                    if call._run is not None and call._run.attempts >= 2:
                        break
                    await asyncio.sleep(0.01)
                await asyncio.sleep(0.1)  # (the failing one has failed)
                cancelled = call.cancel()
                try:
                    await asyncio.wait_for(awaiting, 5)
                    ending = "answered"
                except asyncio.CancelledError:
                    ending = "cancelled"
                except grpc.aio.AioRpcError as error:
                    ending = error.code().name
                seen.append((cancelled, ending))
            await until(lambda: channel.stats().in_flight == 0, 5, "every pod released")
            return seen

    assert drive(scenario()) == [(True, "cancelled")] * 6
