"""Races and rarely taken paths of the call engine, against real pods.

- a channel finalized by the garbage collector while its thread holds the
  balancer's lock must not deadlock (sync and asyncio);
- a hedged response stream, or an asyncio hedged call nobody awaits, hedges at once
  after a non-fatal failure, on a pod not yet tried;
- a sync response stream nobody reads still retries, ends and fires its
  callbacks;
- cancelling an asyncio call whose retry waits for a READY pod ends it at once;
- a winning hedge settles its call as OK, not as its cancelled loser.
"""

from __future__ import annotations

import asyncio
import gc
import json
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import pytest

import grpclb
import grpclb.aio
from grpclb.testing import SERVICE_NAME, PodFleet, echo_pb2
from grpclb.testing.pods import pick_port
from tests.helpers import serve, stub, until, wait_ready

FleetFactory = Callable[..., PodFleet]
ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("flavour", ["sync", "aio"])
def test_a_channel_finalized_while_its_lock_is_held_does_not_deadlock(
    pods: FleetFactory, dns_server: Any, flavour: str
) -> None:
    _, target = serve(pods, dns_server, 1)
    # In a child process: a deadlock there fails this test instead of hanging pytest.
    script = textwrap.dedent(
        f"""
        import asyncio, gc, sys
        import grpclb, grpclb.aio

        async def main():
            if {flavour!r} == "sync":
                channel = grpclb.channel({target!r})
                channel.wait_for_endpoints(1, timeout=10)
            else:
                channel = grpclb.aio.channel({target!r})
                await channel.wait_for_endpoints(1, timeout=10)
            balancer = channel._balancer
            holder = {{"channel": channel}}
            holder["self"] = holder  # only a cycle keeps the channel now
            del channel, holder
            with balancer._lock:  # as if the collector ran inside a locked section
                gc.collect()
            await asyncio.sleep(0.2)
            print("alive", balancer.closed)

        asyncio.run(main())
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=ROOT,
        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "alive True" in done.stdout  # finalized: the pods were forgotten, later, safely


def hedge_all(non_fatal: list[str]) -> str:
    """A hedging policy for every Echo method, with a delay no attempt here outlives."""
    policy = {"maxAttempts": 3, "hedgingDelay": "5s", "nonFatalStatusCodes": non_fatal}
    name = [{"service": "grpclb.testing.Echo"}]
    return json.dumps({"methodConfig": [{"name": name, "hedgingPolicy": policy}]})


@pytest.mark.parametrize(("non_fatal", "attempts"), [(["UNAVAILABLE"], 3), ([], 1)])
def test_a_hedged_response_stream_failing_before_its_first_message_hedges_at_once(
    pods: FleetFactory, dns_server: Any, non_fatal: list[str], attempts: int
) -> None:
    # A6: after a non-fatal status the next hedge is sent at once, to a pod not yet
    # tried; a fatal one is the answer. (No hedge runs beside a response stream.)
    fleet, target = serve(pods, dns_server, 3, "unavailable")
    config = hedge_all(non_fatal)
    with grpclb.channel(target, service_config=config) as channel:
        wait_ready(channel, 3)
        fleet.reset_stats()
        with pytest.raises(grpc.RpcError) as raised:
            list(stub(channel).ServerStream(echo_pb2.EchoRequest(count=1), timeout=4))
        assert raised.value.code() is grpc.StatusCode.UNAVAILABLE
        assert sorted(p.stats().calls for p in fleet) == [0] * (3 - attempts) + [1] * attempts
        assert channel.stats().in_flight == 0

    async def scenario() -> tuple[grpc.StatusCode, list[int], int]:
        async with grpclb.aio.channel(target, service_config=config) as aio_channel:
            await aio_channel.wait_for_endpoints(3, timeout=10)
            fleet.reset_stats()
            call = stub(aio_channel).ServerStream(echo_pb2.EchoRequest(count=1), timeout=4)
            with pytest.raises(grpc.aio.AioRpcError) as error:
                [r async for r in call]
            calls = sorted(p.stats().calls for p in fleet)
            await asyncio.sleep(0)  # the last attempt's release runs on the loop
            return error.value.code(), calls, aio_channel.stats().in_flight

    code, calls, in_flight = asyncio.run(scenario())
    assert code is grpc.StatusCode.UNAVAILABLE
    assert calls == [0] * (3 - attempts) + [1] * attempts
    assert in_flight == 0


def test_an_aio_hedged_call_nobody_awaits_yet_hedges_after_a_non_fatal_failure(
    pods: FleetFactory, dns_server: Any
) -> None:
    fleet, target = serve(pods, dns_server, 3, "unavailable")

    async def scenario() -> None:
        config = hedge_all(["UNAVAILABLE"])
        async with grpclb.aio.channel(target, service_config=config) as channel:
            await channel.wait_for_endpoints(3, timeout=10)
            fleet.reset_stats()
            ended = asyncio.Event()
            call = stub(channel).Unary(echo_pb2.EchoRequest(), timeout=4)
            call.add_done_callback(lambda _: ended.set())
            await asyncio.wait_for(ended.wait(), 4)  # nobody awaits the call itself
            assert sorted(p.stats().calls for p in fleet) == [1, 1, 1]  # a pod each
            with pytest.raises(grpc.aio.AioRpcError) as error:
                await call
            assert error.value.code() is grpc.StatusCode.UNAVAILABLE
            assert sorted(p.stats().calls for p in fleet) == [1, 1, 1]  # no attempt more

    asyncio.run(scenario())


@pytest.mark.parametrize("kind", ["unary", "stream"])
@pytest.mark.parametrize("when", ["in the attempt's callback", "a loop turn later"])
def test_a_cancel_between_a_hedged_aio_calls_failure_and_its_next_hedge_ends_the_call(
    pods: FleetFactory, dns_server: Any, kind: str, when: str
) -> None:
    # In the loop turns between an attempt's failure and its driver's decision, cancel()
    # found only a finished attempt: it returned False and the next hedges went out.
    fleet, target = serve(pods, dns_server, 3, "unavailable")

    async def scenario() -> tuple[list[bool], str, int]:
        config = hedge_all(["UNAVAILABLE"])
        async with grpclb.aio.channel(target, service_config=config) as channel:
            await channel.wait_for_endpoints(3, timeout=10)
            fleet.reset_stats()
            request = echo_pb2.EchoRequest(count=1)
            call: Any = getattr(stub(channel), "Unary" if kind == "unary" else "ServerStream")(
                request, timeout=4
            )
            returned: list[bool] = []
            attempt_done = call._attempt_done  # runs as the attempt ends (grpc.aio's callback)

            def cancel_as_it_fails(attempt: Any) -> None:
                attempt_done(attempt)
                if not returned:
                    if when == "in the attempt's callback":
                        returned.append(call.cancel())
                    else:
                        loop.call_soon(lambda: returned.append(call.cancel()))

            loop = asyncio.get_running_loop()
            call._attempt_done = cancel_as_it_fails
            with pytest.raises(asyncio.CancelledError):
                if kind == "unary":
                    await call
                else:
                    [r async for r in call]
            await asyncio.sleep(0)  # the attempt's release runs on the loop
            return returned, str(call.cancelled()), channel.stats().in_flight

    returned, cancelled, in_flight = asyncio.run(scenario())
    assert returned == [True] and cancelled == "True" and in_flight == 0
    assert sum(p.stats().calls for p in fleet) == 1  # no hedge after the cancel


def test_an_awaited_aio_hedged_call_waits_out_the_servers_pushback_for_its_next_hedge(
    pods: FleetFactory, dns_server: Any
) -> None:
    # A6: "Send next hedged request in n ms". With no other hedge running, the awaited
    # call returned its first failure instead of waiting for the next hedge.
    fleet, target = serve(pods, dns_server, 3, "unavailable_pushback", 100)

    async def scenario() -> tuple[grpc.StatusCode, float]:
        config = hedge_all(["UNAVAILABLE"])
        async with grpclb.aio.channel(target, service_config=config) as channel:
            await channel.wait_for_endpoints(3, timeout=10)
            fleet.reset_stats()
            started = time.monotonic()
            with pytest.raises(grpc.aio.AioRpcError) as error:
                await stub(channel).Unary(echo_pb2.EchoRequest(), timeout=4)
            return error.value.code(), time.monotonic() - started

    code, took = asyncio.run(scenario())
    assert code is grpc.StatusCode.UNAVAILABLE
    assert sorted(p.stats().calls for p in fleet) == [1, 1, 1]
    assert took >= 0.2  # two pushbacks of 100 ms between the three attempts


def test_an_aio_hedge_never_starts_after_the_calls_deadline(
    pods: FleetFactory, dns_server: Any
) -> None:
    # The first attempt ends at the deadline with a non-fatal status, so the next hedge is
    # due at once: it was sent with no time left. (Sync: test_sync_call_cancellation.py.)
    _fleet, target = serve(pods, dns_server, 3, "hang")
    policy = {"maxAttempts": 3, "hedgingDelay": "5s"}
    policy["nonFatalStatusCodes"] = ["UNAVAILABLE", "DEADLINE_EXCEEDED"]
    name = [{"service": "grpclb.testing.Echo"}]
    config = json.dumps({"methodConfig": [{"name": name, "hedgingPolicy": policy}]})

    async def scenario() -> list[int]:
        async with grpclb.aio.channel(target, service_config=config) as channel:
            await channel.wait_for_endpoints(3, timeout=10)
            started = []
            for _ in range(5):
                before = channel._balancer.counters["calls"]
                with pytest.raises(grpc.aio.AioRpcError) as error:
                    await stub(channel).Unary(echo_pb2.EchoRequest(), timeout=0.05)
                assert error.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED
                started.append(channel._balancer.counters["calls"] - before)
            return started

    assert asyncio.run(scenario()) == [1] * 5


async def awaited(call: Any) -> Any:
    return await call


def test_an_aio_hedged_call_whose_task_is_cancelled_between_hedges_reports_cancelled(
    pods: FleetFactory, dns_server: Any
) -> None:
    # The task got CancelledError, but cancelled() said False and code() named the last
    # hedge's failure: the driver never cancelled the call it left.
    _fleet, target = serve(pods, dns_server, 3, "unavailable_pushback", 2000)

    async def scenario() -> tuple[bool, grpc.StatusCode, int]:
        config = hedge_all(["UNAVAILABLE"])
        async with grpclb.aio.channel(target, service_config=config) as channel:
            await channel.wait_for_endpoints(3, timeout=10)
            balancer = channel._balancer
            call = stub(channel).Unary(echo_pb2.EchoRequest(), timeout=8)
            task = asyncio.ensure_future(awaited(call))
            # The first hedge failed; the next waits out the server's 2 s pushback.
            await until(lambda: balancer.counters["calls"] == 1 and not balancer._in_flight)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            return call.cancelled(), await call.code(), balancer.counters["calls"]

    assert asyncio.run(scenario()) == (True, grpc.StatusCode.CANCELLED, 1)


def test_an_aio_hedged_call_whose_task_is_cancelled_while_it_waits_for_a_pod_ends(
    dns_server: Any,
) -> None:
    # Its first attempt kept waiting for a READY pod in a task of its own, and code()
    # raised AttributeError.
    port = pick_port(["127.0.0.1"])  # nothing listens there: the pod never gets READY
    dns_server.set_records(SERVICE_NAME, ["127.0.0.1"])

    async def scenario() -> tuple[bool, grpc.StatusCode]:
        config = hedge_all(["UNAVAILABLE"])
        target = dns_server.target(SERVICE_NAME, port)
        async with grpclb.aio.channel(target, service_config=config) as channel:
            call = stub(channel).Unary(echo_pb2.EchoRequest(), timeout=8, wait_for_ready=True)
            task = asyncio.ensure_future(awaited(call))
            await until(lambda: channel.stats().resolutions > 0)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            starter = call._starter
            await until(lambda: starter is None or starter.done())
            return call.cancelled(), await call.code()

    assert asyncio.run(scenario()) == (True, grpc.StatusCode.CANCELLED)


@pytest.mark.parametrize("ending", ["cancelled", "failed"])
def test_an_aio_response_stream_read_after_its_end_raises_again(
    pods: FleetFactory, dns_server: Any, ending: str
) -> None:
    # The second read() returned EOF, a clean end, for a cancelled or failed call.
    fleet, target = serve(pods, dns_server, 1)
    fleet[0].set_mode("hang" if ending == "cancelled" else "unavailable")

    async def scenario() -> list[str]:
        async with grpclb.aio.channel(target, retries=0) as channel:
            await channel.wait_for_endpoints(1, timeout=10)
            call = stub(channel).ServerStream(echo_pb2.EchoRequest(count=1), timeout=8)
            if ending == "cancelled":
                await until(lambda: fleet[0].stats().in_flight == 1)
                call.cancel()
            seen = []
            for _ in range(2):
                try:
                    seen.append(repr(await call.read()))
                except (grpc.aio.AioRpcError, asyncio.CancelledError) as error:
                    seen.append(type(error).__name__)
            return seen

    raised = "CancelledError" if ending == "cancelled" else "AioRpcError"
    assert asyncio.run(scenario()) == [raised, raised]


def test_a_cancel_after_an_aio_hedge_answered_returns_false_and_the_answer_stands(
    pods: FleetFactory, dns_server: Any
) -> None:
    # A cancel between a hedge's OK and its driver seeing it (other hedges still running)
    # returned True and threw the answer away; without hedges such an answer stands.
    _fleet, target = serve(pods, dns_server, 3, "slow", 300)
    policy = {"maxAttempts": 3, "hedgingDelay": "0.05s", "nonFatalStatusCodes": ["UNAVAILABLE"]}
    name = [{"service": "grpclb.testing.Echo"}]
    config = json.dumps({"methodConfig": [{"name": name, "hedgingPolicy": policy}]})

    async def scenario() -> tuple[list[bool], bool, str]:
        async with grpclb.aio.channel(target, service_config=config) as channel:
            await channel.wait_for_endpoints(3, timeout=10)
            call: Any = stub(channel).Unary(echo_pb2.EchoRequest(message="m"), timeout=8)
            task = asyncio.ensure_future(awaited(call))
            await until(lambda: call._hedges is not None and len(call._hedges) == 3)
            returned: list[bool] = []

            def cancel_on_the_first_answer(hedge: Any) -> None:  # before the driver runs
                if not returned:
                    returned.append(call.cancel())

            for hedge in list(call._hedges):
                hedge.add_done_callback(cancel_on_the_first_answer)
            reply = await task
            return returned, call.cancelled(), reply.message

    assert asyncio.run(scenario()) == ([False], False, "m")


def test_a_sync_stream_nobody_reads_retries_ends_and_fires_its_callbacks(
    pods: FleetFactory, dns_server: Any
) -> None:
    fleet, target = serve(pods, dns_server, 2, "unavailable")
    with grpclb.channel(target, retries=2, policy="round_robin") as channel:
        wait_ready(channel, 2)
        fleet.reset_stats()
        fired = threading.Event()
        call = stub(channel).ServerStream(echo_pb2.EchoRequest(count=1), timeout=5)
        call.add_done_callback(lambda _: fired.set())
        assert fired.wait(5), "the stream never ended for a caller that does not read it"
        assert call.done() and call.code() is grpc.StatusCode.UNAVAILABLE
        assert sum(p.stats().calls for p in fleet) == 3  # retried as a reader would be
        assert channel.stats().in_flight == 0


def test_cancelling_an_aio_call_whose_retry_waits_for_a_pod_ends_it_at_once(
    pods: FleetFactory, dns_server: Any
) -> None:
    fleet, target = serve(pods, dns_server, 1)
    fleet[0].set_mode("unavailable")
    settings: dict[str, Any] = {"retries": 2, "retry_backoff_base": "0.3s"}
    settings["retry_backoff_max"] = "0.3s"

    async def scenario() -> tuple[float, str]:
        async with grpclb.aio.channel(target, **settings) as channel:
            await channel.wait_for_endpoints(1, timeout=10)
            call = stub(channel).Unary(echo_pb2.EchoRequest(), wait_for_ready=True)
            task = asyncio.ensure_future(call)  # no deadline: only cancel() can end it
            for _ in range(200):
                if channel.stats().retries:
                    break
                await asyncio.sleep(0.01)
            await asyncio.to_thread(fleet[0].stop)  # the retry now waits for a READY pod
            await asyncio.sleep(0.4)
            assert call.cancel()
            started = time.monotonic()
            try:
                await asyncio.wait_for(task, 3)
                outcome = "completed"
            except asyncio.CancelledError:
                outcome = "cancelled"
            except asyncio.TimeoutError:
                outcome = "still pending"
            return time.monotonic() - started, outcome

    took, outcome = asyncio.run(scenario())
    assert outcome == "cancelled" and took < 1.0, (outcome, took)


def test_a_winning_hedge_settles_its_call_ok(pods: FleetFactory, dns_server: Any) -> None:
    fleet, target = serve(pods, dns_server, 2)
    fleet[0].set_mode("slow", delay_ms=600)
    config = json.dumps(
        {
            "methodConfig": [
                {
                    "name": [{"service": "grpclb.testing.Echo", "method": "Unary"}],
                    "hedgingPolicy": {"maxAttempts": 2, "hedgingDelay": "0.05s"},
                }
            ]
        }
    )

    async def scenario() -> list[Any]:
        seen: list[Any] = []
        async with grpclb.aio.channel(
            target, service_config=config, policy="round_robin"
        ) as channel:
            await channel.wait_for_endpoints(2, timeout=10)
            for _ in range(4):
                call = stub(channel).Unary(echo_pb2.EchoRequest(), timeout=5)
                call.add_done_callback(lambda c: seen.append((c._response, c._failure)))
                await call
        return seen

    outcomes = asyncio.run(scenario())
    assert len(outcomes) == 4
    assert all(  # settled as OK
        isinstance(response, echo_pb2.EchoReply) and failure is None
        for response, failure in outcomes
    ), outcomes
    gc.collect()


def test_an_aio_call_nobody_awaited_tells_its_callbacks_and_its_awaiter_one_outcome(
    pods: FleetFactory, dns_server: Any
) -> None:
    fleet, target = serve(pods, dns_server, 2)
    failing = min(fleet, key=lambda p: p.address)  # pick_first's choice
    failing.set_mode("unavailable")

    async def scenario() -> tuple[list[Any], Any, int]:
        async with grpclb.aio.channel(target, policy="pick_first", retries=2) as channel:
            await channel.wait_for_endpoints(2, timeout=10)
            await asyncio.to_thread(fleet.reset_stats)
            fired: list[Any] = []
            call = stub(channel).Unary(echo_pb2.EchoRequest(), timeout=5)
            call.add_done_callback(lambda c: fired.append(c.done()))
            for _ in range(300):  # nobody awaits: it is retried in the background
                if fired:
                    break
                await asyncio.sleep(0.01)
            try:
                outcome: Any = (await call).pod
            except grpc.aio.AioRpcError as error:
                outcome = error.code()
            served = await asyncio.to_thread(lambda: sum(p.stats().calls for p in fleet))
            return fired, outcome, served

    fired, outcome, served = asyncio.run(scenario())
    assert fired == [True]  # once, for the final outcome, not for the failed attempt
    healthy = max(fleet, key=lambda p: p.address)
    assert outcome == healthy.address  # what its callbacks were told: the retry's success
    assert served == 2
