"""A call's life from start to end: cancel, abandonment, retries, and the channel's own end.

What a caller can rely on, in both flavours: an abandoned call is cancelled
and released as grpcio would; a call made before the first DNS answer is
sent once however many tasks use it; cancel() ends a call that waits for a
pod; a cancel during a retry backoff gives the budget back; the caller's own
errors are not charged to a pod; a dropped channel is collected; a closed
channel opens no connection; a slow subscriber does not stall DNS refresh;
futures and streams keep grpcio's semantics; the retry budget decides alike
for every call style; and a connection closed under a call fails it as an
RpcError.

Real pods on 127.0.0.x and the real dnsmasq fixture, as in the other integration
suites. Every call has a deadline, every wait a bound, and each test ends in
well under 10 s.
"""

from __future__ import annotations

import asyncio
import gc
import json
import os
import signal
import subprocess
import sys
import threading
import time
import weakref
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import grpc
import grpc.aio
import pytest

import grpclb
import grpclb.aio
from grpclb.testing import SERVICE_NAME, PodFleet, echo_pb2
from tests.helpers import drive, ending, ready, serve, stub, until, wait_ready, wait_until

FleetFactory = Callable[..., PodFleet]
T = TypeVar("T")
READY = grpc.ChannelConnectivity.READY
# Backoffs long enough to act during one (uniform in [0, 2 s]); no ejection in the way.
SLOW_BACKOFF: dict[str, Any] = {
    "retry_backoff_base": "2s",
    "retry_backoff_max": "2s",
    "consecutive_failures": 0,
}
TRIES = 4  # attempts at landing inside a random backoff before giving up


def first_and_second(fleet: PodFleet) -> tuple[Any, Any]:
    """pick_first's pod (the lowest address) and the other one."""
    ordered = sorted(fleet, key=lambda p: p.address)
    return ordered[0], ordered[1]


def eventually(predicate: Callable[[], Any], timeout: float) -> bool:
    try:
        return bool(wait_until(predicate, timeout))
    except AssertionError:
        return False


def granted(channel: Any, retries: int) -> bool:
    return bool(channel.stats().retries >= retries)


def calls_at_pods(fleet: PodFleet) -> int:
    return sum(p.stats().calls for p in fleet)


# --- an abandoned sync call is cancelled and released ------------------------------------------


@pytest.mark.parametrize("style", ["stream", "future"])
@pytest.mark.parametrize("retries", [0, 2])
def test_an_abandoned_call_is_cancelled_and_released_as_grpcio_does(
    pods: FleetFactory, dns_server: Any, style: str, retries: int
) -> None:
    fleet, target = serve(pods, dns_server, 1)
    with grpclb.channel(target, retries=retries) as channel:
        wait_ready(channel, 1)
        echo = stub(channel)
        if style == "stream":  # a watch-like stream the caller stops reading (``break``)
            call = echo.ServerStream(echo_pb2.EchoRequest(count=1000, sleep_ms=20), timeout=8)
            next(call)
        else:  # a fire-and-forget future
            fleet[0].set_mode("hang")
            call = echo.Unary.future(echo_pb2.EchoRequest(), timeout=8)
            wait_until(lambda: fleet[0].stats().in_flight == 1, 5, "the call at the pod")
        del call
        gc.collect()
        released = eventually(lambda: channel.stats().in_flight == 0, 5.0)
        at_pod = fleet[0].stats().in_flight
    assert released, "the abandoned call still counts as in flight"
    assert at_pod == 0, "the pod still serves the abandoned call"


# --- aio: every consumer of a call waiting for its first pod shares one attempt ----------------


def test_aio_two_awaiters_of_a_call_made_before_the_first_answer_send_it_once(
    pods: FleetFactory, dns_server: Any
) -> None:
    fleet, target = serve(pods, dns_server, 2)

    async def scenario() -> tuple[int, int]:
        async with grpclb.aio.channel(target, policy="round_robin") as channel:
            call = stub(channel).Unary(echo_pb2.EchoRequest(), timeout=5)  # no pod known yet
            await asyncio.gather(call, call.initial_metadata())
            await until(lambda: channel.stats().in_flight == 0, 3, "calls to end")
            return channel.stats().calls, await asyncio.to_thread(calls_at_pods, fleet)

    assert drive(scenario()) == (1, 1)  # (attempts counted, requests the pods received)


def test_aio_bidi_reader_and_writer_tasks_share_one_stream(
    pods: FleetFactory, dns_server: Any
) -> None:
    fleet, target = serve(pods, dns_server, 2)

    async def scenario() -> tuple[Any, int, int]:
        async with grpclb.aio.channel(target, policy="round_robin") as channel:
            call = stub(channel).BidiStream(timeout=4)  # the usual startup moment: no pod yet

            async def read() -> list[str]:
                return [reply.message async for reply in call]

            reader = asyncio.ensure_future(read())
            await call.write(echo_pb2.EchoRequest(message="a"))
            await call.done_writing()
            done, _ = await asyncio.wait({reader}, timeout=2)
            got = reader.result() if done else "reader still waiting"
            await asyncio.sleep(0.2)
            in_flight = channel.stats().in_flight
            return got, in_flight, await asyncio.to_thread(calls_at_pods, fleet)

    assert drive(scenario()) == (["a"], 0, 1)


# --- aio: cancel() ends a call another task awaits while it waits for a pod --------------------


def test_aio_cancel_ends_an_awaited_call_that_waits_for_a_pod(
    pods: FleetFactory, dns_server: Any
) -> None:
    fleet = pods(1)
    absent = dns_server.target("absent.test", fleet.port)  # NXDOMAIN: no pod, ever

    async def scenario() -> tuple[bool, Any, float]:
        async with grpclb.aio.channel(absent) as channel:
            call = stub(channel).Unary(echo_pb2.EchoRequest(), timeout=4, wait_for_ready=True)
            awaiter = asyncio.ensure_future(ending(call))
            await asyncio.sleep(0.3)  # the awaiter now waits inside the call for a pod
            cancelled = call.cancel()
            started = time.monotonic()
            result = await asyncio.wait_for(awaiter, 6)
            return cancelled, result, time.monotonic() - started

    cancelled, result, took = drive(scenario())
    assert cancelled
    assert isinstance(result, asyncio.CancelledError), repr(result)
    assert took < 0.5, took


# --- aio: cancel() of a running call another task awaits: done at once, no verdict on the pod ---


def test_aio_cancel_of_an_awaited_running_call_is_done_at_once(
    pods: FleetFactory, dns_server: Any
) -> None:
    fleet, target = serve(pods, dns_server, 1)
    (pod,) = fleet.pods
    pod.set_mode("slow", delay_ms=3000)

    async def scenario() -> tuple[bool, bool, int, Any, Any]:
        async with grpclb.aio.channel(target, consecutive_failures=1) as channel:
            await ready(channel, 1)
            call = stub(channel).Unary(echo_pb2.EchoRequest(), timeout=8)
            fired: list[Any] = []
            call.add_done_callback(fired.append)
            awaiter = asyncio.ensure_future(ending(call))
            await until(lambda: pod.stats().in_flight == 1, 5, "the call at the pod")
            assert call.cancel()
            done_at_once = call.done() and call.cancelled()
            result = await asyncio.wait_for(awaiter, 3)
            await until(lambda: channel.stats().in_flight == 0, 3, "the attempt released")
            return done_at_once, fired == [call], len(fired), result, channel.stats()

    done_at_once, fired_with_call, fired, result, stats = drive(scenario())
    assert done_at_once
    assert fired_with_call and fired == 1
    assert isinstance(result, asyncio.CancelledError), repr(result)
    assert stats.failures == 0 and stats.endpoints[0].ejections == 0  # a cancel is no verdict


# --- aio: a cancel during a retry backoff gives the retry budget back --------------------------


def test_aio_cancel_during_a_retry_backoff_gives_the_retry_budget_back(
    pods: FleetFactory, dns_server: Any
) -> None:
    fleet, target = serve(pods, dns_server, 2)
    failing, healthy = first_and_second(fleet)
    failing.set_mode("unavailable")
    budget: dict[str, Any] = {"retry_budget_min_concurrency": 1, "retry_budget_percent": 0}

    async def scenario() -> tuple[Any, int]:
        async with grpclb.aio.channel(
            target, policy="pick_first", **SLOW_BACKOFF, **budget
        ) as channel:
            await ready(channel, 2)
            echo = stub(channel)
            for _ in range(TRIES):
                before = channel.stats()
                call = echo.Unary(echo_pb2.EchoRequest(), timeout=8)
                awaiter = asyncio.ensure_future(ending(call))
                await until(partial(granted, channel, before.retries + 1), 3, "a retry")
                if channel.stats().calls == before.calls + 1:  # in its backoff
                    break
                await awaiter
            else:
                pytest.fail("no backoff was long enough to cancel during it")
            assert call.cancel()
            assert isinstance(await asyncio.wait_for(awaiter, 3), asyncio.CancelledError)
            # Nothing is in flight now: the one retry the budget allows must be granted.
            refused = channel.stats().retries_refused
            result = await ending(echo.Unary(echo_pb2.EchoRequest(), timeout=5))
            return result, channel.stats().retries_refused - refused

    result, newly_refused = drive(scenario())
    assert newly_refused == 0
    assert result == healthy.address, repr(result)


# --- the caller's own errors are not charged to the pod ----------------------------------------


def _raising_requests() -> Any:
    yield echo_pb2.EchoRequest(message="a")
    raise RuntimeError("a bug in the caller's request generator")


@pytest.mark.parametrize("bug", ["request_iterator", "serializer"])
def test_a_callers_own_error_is_not_charged_to_the_pod(
    pods: FleetFactory, dns_server: Any, bug: str
) -> None:
    fleet, target = serve(pods, dns_server, 2)
    first, _ = first_and_second(fleet)
    with grpclb.channel(target, policy="pick_first", retries=0) as channel:
        wait_ready(channel, 2)
        echo = stub(channel)
        for _ in range(5):  # consecutive_failures' default
            with pytest.raises(grpc.RpcError):
                if bug == "request_iterator":
                    echo.ClientStream(_raising_requests(), timeout=5)
                else:
                    echo.Unary("not an EchoRequest", timeout=5)
        row = channel.stats().by_address()[first.address]
    assert (row.state, row.failures) == ("ready", 0)


def test_aio_a_callers_request_iterator_error_is_not_charged_to_the_pod(
    pods: FleetFactory, dns_server: Any
) -> None:
    """Right today (grpc.aio cancels such a call): keep it so when the two flavours converge."""
    fleet, target = serve(pods, dns_server, 2)
    first, _ = first_and_second(fleet)

    async def requests() -> Any:
        yield echo_pb2.EchoRequest(message="a")
        raise RuntimeError("a bug in the caller's request generator")

    async def scenario() -> Any:
        async with grpclb.aio.channel(target, policy="pick_first", retries=0) as channel:
            await ready(channel, 2)
            for _ in range(5):
                await ending(stub(channel).ClientStream(requests(), timeout=5))
            await until(lambda: channel.stats().in_flight == 0, 3, "calls to end")
            return channel.stats().by_address()[first.address]

    row = drive(scenario())
    assert (row.state, row.failures) == ("ready", 0)


# --- a sync channel dropped without close() is collected ---------------------------------------


def test_a_dropped_channel_is_collected_and_its_thread_ends(
    pods: FleetFactory, dns_server: Any
) -> None:
    _, target = serve(pods, dns_server, 1)
    channel = grpclb.channel(target)
    stub(channel).Unary(echo_pb2.EchoRequest(), timeout=5, wait_for_ready=True)
    thread_name = f"grpclb {target}"
    ref = weakref.ref(channel)
    del channel
    gc.collect()
    leaked = ref()
    try:
        assert leaked is None, "the channel outlived its last reference"
        gone = eventually(lambda: thread_name not in {t.name for t in threading.enumerate()}, 3.0)
        assert gone, "its maintenance thread still runs"
    finally:
        if leaked is not None:
            leaked.close()


# --- a DNS answer that lands after close() opens no connection ---------------------------------


def test_a_dns_answer_after_close_opens_no_connection(pods: FleetFactory, dns_server: Any) -> None:
    _, target = serve(pods, dns_server, 1)
    pid = dns_server._proc.pid  # the harness's dnsmasq; SIGSTOP holds its answer back
    os.kill(pid, signal.SIGSTOP)
    try:
        channel = grpclb.channel(target, dns_timeout="5s")
        time.sleep(0.5)  # its thread is now inside the first query
        channel.close()  # gives up waiting for that thread after 1 s
    finally:
        os.kill(pid, signal.SIGCONT)  # the query gets its answer now
    try:
        opened = eventually(lambda: len(channel.stats().endpoints) > 0, 3.0)
        rows = channel.stats().endpoints
    finally:
        for connection in channel._balancer.shutdown():  # do not leak into other tests
            connection.channel.close()
    assert not opened, f"a closed channel now has pods: {rows}"


# --- a slow connectivity subscriber does not stall the channel's maintenance -------------------


def test_a_slow_subscriber_does_not_stall_dns_refresh(pods: FleetFactory, dns_server: Any) -> None:
    fleet, target = serve(pods, dns_server, 1)
    release = threading.Event()

    def slow_subscriber(state: grpc.ChannelConnectivity) -> None:
        if state is READY:
            release.wait(5)

    with grpclb.channel(
        target, dns_refresh_interval="200ms", dns_min_refresh_interval="100ms"
    ) as channel:
        wait_ready(channel, 1)
        channel.subscribe(slow_subscriber)
        try:
            time.sleep(0.2)  # the subscriber now holds the maintenance thread
            (added,) = fleet.add(1)
            dns_server.set_records(SERVICE_NAME, [p.host for p in fleet])
            found = eventually(lambda: added.address in channel.stats().by_address(), 2.0)
        finally:
            release.set()
            channel.unsubscribe(slow_subscriber)
    assert found, "a pod added to DNS was not seen within 10 refresh intervals"


# --- sync futures and streams keep grpcio's semantics ------------------------------------------


def test_a_stream_done_callback_sees_the_stream_and_its_final_status(
    pods: FleetFactory, dns_server: Any
) -> None:
    fleet, target = serve(pods, dns_server, 2)
    failing, healthy = first_and_second(fleet)
    failing.set_mode("unavailable")
    seen: list[tuple[bool, Any]] = []
    with grpclb.channel(target, policy="pick_first", consecutive_failures=0) as channel:
        wait_ready(channel, 2)
        stream = stub(channel).ServerStream(echo_pb2.EchoRequest(count=2), timeout=5)
        stream.add_done_callback(lambda call: seen.append((call is stream, call.code())))
        served = [reply.pod for reply in stream]
        wait_until(lambda: seen, 2, "the done callback")
    assert served == [healthy.address] * 2
    assert seen == [(True, grpc.StatusCode.OK)]


def test_a_cancelled_future_is_done_when_cancel_returns(
    pods: FleetFactory, dns_server: Any
) -> None:
    fleet, target = serve(pods, dns_server, 1)
    fleet[0].set_mode("hang")
    states = []
    with grpclb.channel(target) as channel:  # retries on: futures are RetryingFutures
        wait_ready(channel, 1)
        echo = stub(channel)
        for _ in range(10):
            future = echo.Unary.future(echo_pb2.EchoRequest(), timeout=5)
            assert future.cancel()
            states.append((future.done(), future.cancelled()))
            with pytest.raises(grpc.FutureCancelledError):
                future.result(timeout=2)
    assert states == [(True, True)] * 10


# --- the retry budget asks the same question for every call style ------------------------------


@pytest.mark.parametrize("style", ["blocking", "future", "aio"])
def test_the_retry_budget_decides_alike_for_every_call_style(
    pods: FleetFactory, dns_server: Any, style: str
) -> None:
    fleet, target = serve(pods, dns_server, 2)
    failing, healthy = first_and_second(fleet)
    failing.set_mode("unavailable")
    # Only the percentage applies: "retries in flight under 100 % of calls in flight".
    settings: dict[str, Any] = {
        "policy": "pick_first",
        "consecutive_failures": 0,
        "retry_budget_min_concurrency": 0,
        "retry_budget_percent": 100,
    }
    if style == "aio":

        async def scenario() -> Any:
            async with grpclb.aio.channel(target, **settings) as channel:
                await ready(channel, 2)
                return await ending(stub(channel).Unary(echo_pb2.EchoRequest(), timeout=5))

        served = drive(scenario())
    else:
        with grpclb.channel(target, **settings) as channel:
            wait_ready(channel, 2)
            echo = stub(channel)
            try:
                if style == "blocking":
                    served = echo.Unary(echo_pb2.EchoRequest(), timeout=5).pod
                else:
                    served = echo.Unary.future(echo_pb2.EchoRequest(), timeout=5).result(5).pod
            except grpc.RpcError as error:
                served = error
    assert served == healthy.address, repr(served)


# --- a call on a connection its grace then closes fails as an RpcError -------------------------

_GRACE_CHILD = """
import json, sys, threading, time
import grpc, grpclb
from grpclb.testing import echo_pb2, echo_pb2_grpc
channel = grpclb.channel(sys.argv[1], policy="round_robin", retries=0,
                         max_requests_per_connection=1, max_connection_age_grace="5ms")
echo = echo_pb2_grpc.EchoStub(channel)
end = time.monotonic() + 2.5
outcomes, lock = {}, threading.Lock()
def load():
    while time.monotonic() < end:
        try:
            echo.Unary(echo_pb2.EchoRequest(), timeout=2, wait_for_ready=True)
            kind = "ok"
        except grpc.RpcError as error:
            kind = "RpcError " + error.code().name
        except Exception as error:
            kind = type(error).__name__ + ": " + str(error)
        with lock:
            outcomes[kind] = outcomes.get(kind, 0) + 1
threads = [threading.Thread(target=load) for _ in range(32)]
for t in threads: t.start()
for t in threads: t.join(10)
print(json.dumps(outcomes), flush=True)
channel.close()
"""


def test_a_call_admitted_onto_a_connection_closed_by_its_grace_fails_as_an_rpc_error(
    pods: FleetFactory,
) -> None:
    fleet = pods(2)
    target = "ipv4:" + ",".join(fleet.addresses)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    child = subprocess.run(  # its own process: a segfault must not take pytest with it
        [sys.executable, "-c", _GRACE_CHILD, target],
        capture_output=True,
        timeout=9,
        env=env,
    )
    assert child.returncode == 0, f"the client process died: {child.returncode}"
    outcomes = json.loads(child.stdout.decode().strip().splitlines()[-1])
    escaped = {kind: n for kind, n in outcomes.items() if not kind.startswith(("ok", "RpcError"))}
    assert escaped == {}, outcomes


# --- close() from a done-callback --------------------------------------------------------------


def test_close_from_a_futures_done_callback_returns_promptly(
    pods: FleetFactory, dns_server: Any
) -> None:
    """The callback runs on grpcio's thread of the very pod channel close() must close."""
    _, target = serve(pods, dns_server, 1)
    channel = grpclb.channel(target, retries=0)
    echo = stub(channel)
    echo.Unary(echo_pb2.EchoRequest(), timeout=5, wait_for_ready=True)
    closed = threading.Event()
    took: list[float] = []

    def close_now(_: Any) -> None:
        started = time.monotonic()
        channel.close()
        took.append(time.monotonic() - started)
        closed.set()

    try:
        echo.Unary.future(echo_pb2.EchoRequest(), timeout=5).add_done_callback(close_now)
        assert closed.wait(6), "close() from a done-callback hung"
    finally:
        channel.close()
    assert took[0] < 2.0, took
    assert channel.stats().in_flight == 0
