"""Edge cases of the call path, against real pods and the real DNS server.

One test per behaviour: an aio loop that never freezes under orphaned calls
and frequent garbage collection, wait_for_ready calls that move to a pod that
becomes READY elsewhere, cancels that end the RPC and release its count,
call constructors that never block, dropped aio channels that are collected,
closed and forked channels that refuse futures as they refuse other calls,
and a retried future's callbacks that fire once, at its outcome.

Every call carries a deadline and every wait a bound; a scenario that could
freeze its event loop runs in a child process with a watchdog of its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import importlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
import weakref
from collections.abc import Callable
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
CANCELLED = grpc.StatusCode.CANCELLED
FAST_DNS: dict[str, Any] = {"dns_refresh_interval": "200ms", "dns_min_refresh_interval": "100ms"}
ROOT = Path(__file__).resolve().parents[2]


def request(**fields: Any) -> echo_pb2.EchoRequest:
    return echo_pb2.EchoRequest(**fields)


async def soon(predicate: Callable[[], Any], timeout: float) -> bool:
    """Whether ``predicate`` holds within ``timeout`` seconds (never raises)."""
    with contextlib.suppress(AssertionError):
        await until(predicate, timeout)
        return True
    return False


# --- an aio loop with orphaned calls and frequent garbage collection never freezes ----------

_ORPHANS_CHILD = """
import asyncio, faulthandler, gc, json, sys, time
import grpclb.aio
from grpclb.testing import echo_pb2, echo_pb2_grpc

target, rounds = sys.argv[1], int(sys.argv[2])
beat = {"last": time.monotonic(), "ticks": 0, "worst_gap": 0.0}
freed = {"collections": 0, "objects": 0}

def count(phase, info):  # proof that the collector, not reference counting, freed the calls
    if phase == "stop":
        freed["collections"] += 1
        freed["objects"] += info["collected"]

async def heartbeat():
    while True:
        # faulthandler's watchdog is a C thread that needs no GIL: 5 s without a beat
        # dumps every thread's stack and ends the process with status 1.
        faulthandler.dump_traceback_later(5.0, exit=True)
        now = time.monotonic()
        beat["worst_gap"] = max(beat["worst_gap"], now - beat["last"])
        beat["last"], beat["ticks"] = now, beat["ticks"] + 1
        await asyncio.sleep(0.005)

async def main():
    beating = asyncio.ensure_future(heartbeat())
    # A new connection per call: the balancer's lock is often held while objects are made.
    channel = grpclb.aio.channel(target, policy="round_robin", max_requests_per_connection=1)
    echo = echo_pb2_grpc.EchoStub(channel)
    await echo.Unary(echo_pb2.EchoRequest(), timeout=5, wait_for_ready=True)
    gc.collect()
    gc.freeze()  # what lives now stays out of the way: full collections come often
    gc.set_threshold(1, 1, 1)
    gc.callbacks.append(count)
    async def requests():  # a request stream grpclb keeps for retries and writes itself
        for _ in range(100):
            await asyncio.sleep(0.01)
            yield echo_pb2.EchoRequest(sleep_ms=10)

    for i in range(rounds):
        async def orphan(read):
            if i % 3 == 0:
                call = echo.ServerStream(echo_pb2.EchoRequest(count=100, sleep_ms=10), timeout=10)
            elif i % 3 == 1:
                call = echo.BidiStream(requests(), timeout=10)
            else:
                call = echo.ClientStream(requests(), timeout=10)
                read = False  # (a unary response: awaited below, or not)
            knot = [call]
            knot.append(knot)  # a reference cycle: only the collector frees the call
            if read:
                async for _ in call:
                    pass
            elif i % 6 == 2:
                await call
        task = asyncio.ensure_future(orphan(i % 2 == 0))  # cancelled reading, or never read
        await asyncio.sleep(0)
        task.cancel()
    gc.callbacks.remove(count)
    gc.set_threshold(700, 10, 10)
    gc.unfreeze()
    await asyncio.wait_for(channel.close(), 5)
    beating.cancel()
    faulthandler.cancel_dump_traceback_later()
    print(json.dumps({"frozen": False, "rounds": rounds, "ticks": beat["ticks"],
                      "worst_gap": beat["worst_gap"], **freed}), flush=True)

asyncio.run(main())
"""


def test_aio_loop_with_orphaned_streams_and_frequent_gc_never_freezes(
    pods: FleetFactory, dns_server: Any
) -> None:
    _, where = serve(pods, dns_server, 3)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    child = subprocess.Popen(  # its own process: a frozen loop must not hang pytest
        [sys.executable, "-c", _ORPHANS_CHILD, where, "300"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
    )
    try:
        out, err = child.communicate(timeout=20)
    except subprocess.TimeoutExpired:  # its own watchdog should have ended it long before
        child.kill()
        out, err = child.communicate(timeout=5)
    lines = out.decode().strip().splitlines()
    report: dict[str, Any] = (
        json.loads(lines[-1]) if lines else {"frozen": f"exit status {child.returncode}"}
    )
    where_stuck = err.decode()[-3000:]
    assert report.get("frozen") is False, f"the event loop froze: {report}\n{where_stuck}"
    assert child.returncode == 0, where_stuck
    assert report["rounds"] == 300 and report["ticks"] > 0
    assert report["worst_gap"] < 5.0, report
    assert report["objects"] > 300, report  # the orphans' cycles were the collector's to free
    print(f"orphaned streams under frequent collection: {report}")


# --- a wait_for_ready call moves to a pod that becomes READY elsewhere -------------------------


@pytest.mark.parametrize("style", ["future", "blocking", "aio"])
def test_wait_for_ready_call_completes_on_a_pod_that_replaces_an_unreachable_one(
    pods: FleetFactory, dns_server: Any, style: str
) -> None:
    fleet = pods(0)  # its port is free on 127.0.0.2 and the next hosts
    unreachable = "127.0.0.3"  # nothing listens there: CONNECTING / TRANSIENT_FAILURE
    dns_server.set_records(SERVICE_NAME, [unreachable])
    where = dns_server.target(SERVICE_NAME, fleet.port)
    moved: dict[str, float] = {}

    def replace() -> str:
        (pod,) = fleet.add(1)  # 127.0.0.2
        moved["at"] = time.monotonic()
        dns_server.set_records(SERVICE_NAME, [pod.host])
        return pod.address

    if style == "aio":

        async def scenario() -> tuple[Any, str]:
            async with grpclb.aio.channel(where, **FAST_DNS) as channel:
                channel.get_state(try_to_connect=True)
                await until(lambda: channel.stats().endpoints, 5, "the unreachable pod")
                call = stub(channel).Unary(request(), timeout=8, wait_for_ready=True)
                waiter = asyncio.ensure_future(ending(call))
                done, _ = await asyncio.wait({waiter}, timeout=0.5)
                assert not done, waiter.result()
                address = await asyncio.to_thread(replace)
                return await waiter, address

        served, address = drive(scenario())
        ended = time.monotonic()
    else:
        with grpclb.channel(where, **FAST_DNS) as channel:
            wait_until(lambda: channel.stats().endpoints, 5, "the unreachable pod")
            echo = stub(channel)
            outcome: list[Any] = []
            if style == "future":
                future = echo.Unary.future(request(), timeout=8, wait_for_ready=True)

                def work() -> Any:
                    return future.result(timeout=10)
            else:

                def work() -> Any:
                    return echo.Unary(request(), timeout=8, wait_for_ready=True)

            waiter = threading.Thread(target=lambda: outcome.append(_served_by(work)))
            waiter.start()
            waiter.join(0.5)
            assert not outcome, outcome
            address = replace()
            waiter.join(10)
            ended = time.monotonic()
            (served,) = outcome
    assert served == address, repr(served)
    assert ended - moved["at"] < 2.0, ended - moved["at"]


def _served_by(work: Callable[[], Any]) -> Any:
    """The pod that served ``work``'s reply, or the RpcError it raised."""
    try:
        return work().pod
    except grpc.RpcError as error:
        return error


# --- a cancelled aio task cancels its RPC and gives back its in-flight count --------------------


def test_aio_task_cancelled_right_after_starting_a_stream_releases_it_at_once(
    pods: FleetFactory, dns_server: Any
) -> None:
    fleet, where = serve(pods, dns_server, 1)

    async def scenario() -> tuple[bool, Any]:
        async with grpclb.aio.channel(where, max_requests=3) as channel:
            await ready(channel, 1)
            echo = stub(channel)
            kept: list[Any] = []  # the calls stay referenced: no collector may end them

            async def read() -> None:
                call = echo.ServerStream(request(count=100, sleep_ms=10), timeout=20)
                kept.append(call)
                async for _ in call:
                    pass

            for _ in range(3):
                task = asyncio.ensure_future(read())
                await asyncio.sleep(0)  # the task started the stream and awaits its first read
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            released = await soon(lambda: channel.stats().in_flight == 0, 2.0)
            # max_requests=3: a later call is admitted only if the three were released
            return released, await ending(echo.Unary(request(), timeout=5))

    gc.disable()
    try:
        released, served = drive(scenario())
    finally:
        gc.enable()
    assert released, "the cancelled streams still count as in flight"
    assert served == fleet[0].address, repr(served)
    assert fleet[0].stats().in_flight == 0


HEDGE_ECHO = json.dumps(
    {
        "methodConfig": [
            {
                "name": [{"service": "grpclb.testing.Echo"}],
                "hedgingPolicy": {
                    "maxAttempts": 3,
                    "hedgingDelay": "0.05s",
                    "nonFatalStatusCodes": ["UNAVAILABLE"],
                },
            }
        ]
    }
)


@pytest.mark.parametrize("policy", ["retries", "hedging"])
def test_aio_unary_calls_are_freed_by_reference_counting_however_they_end(
    pods: FleetFactory, dns_server: Any, policy: str
) -> None:
    """An attempt holds its logical call until it ends (it is the call's done-callback);
    after that, nothing may keep the call in a cycle that only the collector frees."""
    fleet, where = serve(pods, dns_server, 2)
    fleet[0].set_mode("unavailable")  # a call picking it first is retried (or hedged) elsewhere
    fleet[1].set_mode("slow", 300)
    hedging = {"service_config": HEDGE_ECHO} if policy == "hedging" else {}

    async def scenario() -> dict[str, bool]:
        async with grpclb.aio.channel(where, policy="round_robin", **hedging) as channel:
            await ready(channel, 2)
            echo = stub(channel)
            watched: dict[str, Any] = {}

            async def awaited(name: str, timeout: float = 5) -> None:
                call = echo.Unary(request(), timeout=timeout)
                watched[name] = weakref.ref(call)
                await call

            for index in range(2):  # round_robin: one of them meets the failing pod first
                await awaited(f"awaited {index}")
            with pytest.raises(grpc.aio.AioRpcError) as raised:
                await awaited("failed", timeout=0.1)  # the slow pod, or a retry, past 0.1 s
            assert raised.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED
            del raised
            dropped = echo.Unary(request(), timeout=5)  # runs on, unawaited, then ends
            watched["dropped unawaited"] = weakref.ref(dropped)
            del dropped
            task = asyncio.ensure_future(awaited("cancelled"))
            await asyncio.sleep(0.05)  # on the slow pod, or in its retry
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            del task  # its CancelledError's traceback holds the call's frame
            await until(lambda: channel.stats().in_flight == 0, 5, "every attempt released")
            for _ in range(3):
                await asyncio.sleep(0)  # deferred releases run
            return {name: ref() is None for name, ref in watched.items()}

    gc.disable()
    try:
        freed = drive(scenario())
    finally:
        gc.enable()
    assert freed == dict.fromkeys(freed, True), freed
    assert len(freed) == 5
    assert fleet[0].stats().calls >= 1, "no call met the failing pod: nothing was retried"


def test_a_coroutine_closed_while_awaiting_an_aio_call_cancels_and_releases_it(
    pods: FleetFactory, dns_server: Any
) -> None:
    """``coroutine.close()`` at the await (a coroutine driven by hand, or collected after
    its loop ended) throws GeneratorExit into the call's driver: the RPC is cancelled,
    its pod released, and a later ``await`` of the call raises CancelledError."""
    fleet, where = serve(pods, dns_server, 1)
    fleet[0].set_mode("slow", 300)

    async def scenario() -> tuple[bool, Any, Any]:
        async with grpclb.aio.channel(where) as channel:
            await ready(channel, 1)
            call = stub(channel).Unary(request(), timeout=5)

            async def user() -> Any:
                return await call

            driven = user()
            driven.send(None)  # suspended inside the call's await
            driven.close()
            released = await soon(lambda: channel.stats().in_flight == 0, 2.0)
            try:
                await asyncio.wait_for(call, 2)
                later: Any = "no error"
            except BaseException as error:  # any type: the type is what is checked
                later = type(error).__name__
            return released, later, await asyncio.wait_for(call.code(), 2)

    released, later, code = drive(scenario())
    assert released, "the closed coroutine's call still counts as in flight"
    assert later == "CancelledError", later
    assert code is CANCELLED


def test_aio_task_cancelled_inside_a_bidi_write_cancels_the_rpc(
    pods: FleetFactory, dns_server: Any
) -> None:
    fleet, where = serve(pods, dns_server, 1)

    async def scenario() -> tuple[Any, float]:
        async with grpclb.aio.channel(where) as channel:
            await ready(channel, 1)
            call = stub(channel).BidiStream(timeout=20)
            writer = asyncio.ensure_future(call.write(request(message="a")))
            await asyncio.sleep(0)  # inside write(), waiting for the stream to open
            started = time.monotonic()
            writer.cancel()
            ended, _ = await asyncio.wait({asyncio.ensure_future(call.code())}, timeout=5)
            took = time.monotonic() - started
            code = ended.pop().result() if ended else "still running after 5 s"
            await until(lambda: channel.stats().in_flight == 0, 2, "the call released")
            return code, took

    code, took = drive(scenario())
    assert code is CANCELLED
    assert took < 3.0, took  # long before its 20 s deadline
    wait_until(lambda: fleet[0].stats().in_flight == 0, 2, "the pod to see the cancel")


def test_100_callers_cancelling_bidi_writes_do_not_eject_a_healthy_pod(
    pods: FleetFactory, dns_server: Any
) -> None:
    fleet, where = serve(pods, dns_server, 2)

    async def one(echo: Any) -> None:
        call = echo.BidiStream(timeout=1)  # were it left running, it would end at 1 s
        writer = asyncio.ensure_future(call.write(request(message="a")))
        await asyncio.sleep(0)
        writer.cancel()
        with contextlib.suppress(asyncio.CancelledError, grpc.RpcError):
            await writer
        await asyncio.wait_for(call.code(), 5)

    async def scenario() -> Any:
        async with grpclb.aio.channel(where, policy="round_robin") as channel:
            await ready(channel, 2)
            echo = stub(channel)
            for _ in range(10):
                await asyncio.gather(*(one(echo) for _ in range(10)))
            await until(lambda: channel.stats().in_flight == 0, 3, "calls released")
            return channel.stats()

    stats = drive(scenario())
    rows = {row.address: (row.state, row.failures, row.ejections) for row in stats.endpoints}
    assert rows == {address: ("ready", 0, 0) for address in fleet.addresses}, rows
    assert stats.failures == 0


# --- call constructors never block the caller -------------------------------------------------


@pytest.mark.parametrize("style", ["future", "stream"])
@pytest.mark.parametrize("situation", ["pods_come", "dns_answers_late", "no_pod_ever"])
def test_sync_future_and_stream_constructors_return_at_once_without_pods(
    pods: FleetFactory, dns_server: Any, style: str, situation: str
) -> None:
    """The call returns at once, then completes when a pod comes, or fails at its deadline."""
    fleet, where = serve(pods, dns_server, 1)
    hosts = [fleet[0].host]
    timeout = 1.5 if situation == "no_pod_ever" else 8.0
    if situation == "dns_answers_late":
        pid = dns_server._proc.pid  # the harness's dnsmasq; SIGSTOP holds its answers back
        os.kill(pid, signal.SIGSTOP)
        unblock = threading.Timer(1.0, os.kill, (pid, signal.SIGCONT))
        channel = grpclb.channel(where, **FAST_DNS)
    else:
        dns_server.set_records(SERVICE_NAME, [])
        channel = grpclb.channel(where, **FAST_DNS)
        wait_until(lambda: channel.stats().resolutions >= 1, 5, "the empty answer")
        records = hosts if situation == "pods_come" else []
        unblock = threading.Timer(1.0, dns_server.set_records, (SERVICE_NAME, records))
    unblock.start()  # lets a constructor that blocks return, so the test ends either way
    served: list[Any] = []
    try:
        echo = stub(channel)
        started = time.monotonic()
        if style == "future":
            call: Any = echo.Unary.future(request(), timeout=timeout, wait_for_ready=True)
        else:
            call = echo.ServerStream(request(count=2), timeout=timeout, wait_for_ready=True)
        took = time.monotonic() - started
        try:
            if style == "future":
                served.append(call.result(timeout=10).pod)
            else:
                served.extend(reply.pod for reply in call)
        except grpc.RpcError as error:
            served.append(error.code())
    finally:
        unblock.join(5)
        os.kill(dns_server._proc.pid, signal.SIGCONT)
        channel.close()
    assert took < 0.5, f"the constructor blocked for {took:.2f}s"
    if situation == "no_pod_ever":  # as grpcio: a wait_for_ready call waits for its deadline
        assert served == [grpc.StatusCode.DEADLINE_EXCEEDED]
    else:
        assert served == [fleet[0].address] * (1 if style == "future" else 2)


# --- aio channels dropped without close() are collected ---------------------------------------


def test_dropped_aio_channels_are_collected_with_their_tasks_and_fds(
    pods: FleetFactory, dns_server: Any
) -> None:
    fleet, where = serve(pods, dns_server, 2)

    def open_fds() -> int:
        return len(os.listdir("/proc/self/fd"))

    async def use_and_drop() -> weakref.ref[Any]:
        channel = grpclb.aio.channel(where, policy="round_robin")
        reply = await stub(channel).Unary(request(), timeout=5, wait_for_ready=True)
        assert reply.pod in fleet.addresses
        return weakref.ref(channel)

    async def scenario() -> dict[str, Any]:
        await use_and_drop()  # one-time costs (grpc core's threads and pollers) before counting
        gc.collect()
        await asyncio.sleep(0.2)
        tasks, fds = len(asyncio.all_tasks()), open_fds()
        refs = [await use_and_drop() for _ in range(30)]
        for _ in range(20):  # collect, then let the loop run what the finalizers scheduled
            gc.collect()
            await asyncio.sleep(0.05)
            if all(ref() is None for ref in refs) and len(asyncio.all_tasks()) <= tasks:
                break
        return {
            "alive": sum(ref() is not None for ref in refs),
            "tasks": (tasks, len(asyncio.all_tasks())),
            "fds": (fds, open_fds()),
        }

    found = drive(scenario(), timeout=40)
    assert found["alive"] == 0, found
    (tasks_before, tasks_after), (fds_before, fds_after) = found["tasks"], found["fds"]
    assert tasks_after <= tasks_before + 2, found
    assert fds_after <= fds_before + 4, found


# --- closed or forked channels refuse futures as they refuse every call -----------------------


@pytest.mark.parametrize("how", ["closed", "forked"])
def test_future_on_a_closed_or_forked_channel_raises_value_error(
    pods: FleetFactory, dns_server: Any, monkeypatch: pytest.MonkeyPatch, how: str
) -> None:
    _, where = serve(pods, dns_server, 1)
    channel_module = importlib.import_module("grpclb.sync.channel")
    channel = grpclb.channel(where)
    try:
        wait_ready(channel, 1)
        echo = stub(channel)
        if how == "closed":
            channel.close()
        else:  # what a fork would leave: the hook's flag set, another process id
            parent = channel_module.os.getpid()
            monkeypatch.setattr(channel_module.os, "getpid", lambda: parent + 1)
            monkeypatch.setattr(channel_module, "_forked", True)
        with pytest.raises(ValueError):
            echo.Unary(request(), timeout=2)  # the blocking call, for comparison
        with pytest.raises(ValueError):
            echo.Unary.future(request(), timeout=2)
        with pytest.raises(ValueError):
            echo.ServerStream(request(count=1), timeout=2)
    finally:
        monkeypatch.undo()
        channel.close()


# --- a retried future's callbacks fire once, at its final outcome -------------------------------


def test_retried_future_callbacks_fire_once_at_the_final_outcome(
    pods: FleetFactory, dns_server: Any
) -> None:
    fleet, where = serve(pods, dns_server, 2)
    failing, healthy = sorted(fleet, key=lambda p: p.address)  # pick_first takes the lowest
    failing.set_mode("unavailable")
    seen: dict[str, list[tuple[bool, Any]]] = {"add_callback": [], "add_done_callback": []}
    settings: dict[str, Any] = {
        "policy": "pick_first",
        "consecutive_failures": 0,
        "retry_budget_percent": 100,
        "retry_backoff_base": "100ms",  # the first attempt's end and the outcome are apart
        "retry_backoff_max": "100ms",
    }
    with grpclb.channel(where, **settings) as channel:
        wait_ready(channel, 2)
        future = stub(channel).Unary.future(request(), timeout=5)

        def recorder(register: str) -> Callable[..., None]:
            def callback(*_: Any) -> None:  # add_callback passes nothing, the other the future
                reply = future.result(timeout=0) if future.done() else None
                seen[register].append((future.done(), reply.pod if reply is not None else None))

            return callback

        future.add_callback(recorder("add_callback"))
        future.add_done_callback(recorder("add_done_callback"))
        reply = future.result(timeout=5)
        wait_until(lambda: all(seen.values()), 5, "both callbacks")
        wait_until(lambda: channel.stats().in_flight == 0, 2, "the attempts released")
        retries = channel.stats().retries
    assert reply.pod == healthy.address and retries == 1
    once = [(True, healthy.address)]
    assert seen == {"add_callback": once, "add_done_callback": once}, seen
