"""Cancelling sync futures and response streams between attempts, against real pods.

A cancel that returns True ends the call: no attempt goes out after it, a
retry or hedge waiting for a pod stops waiting and gives its grant back, and
the call reports CANCELLED however it is asked. Hedges never start after the
call's deadline. (The asyncio flavour's counterparts are in
test_call_path_races.py.)
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from typing import Any

import grpc
import pytest

import grpclb
from grpclb.testing import PodFleet, echo_pb2
from tests.helpers import serve, stub, wait_ready, wait_until

FleetFactory = Callable[..., PodFleet]
ECHO = [{"service": "grpclb.testing.Echo"}]


def retry_policy(backoff: str = "0.005s") -> str:
    policy = {
        "maxAttempts": 3,
        "initialBackoff": backoff,
        "maxBackoff": backoff,
        "backoffMultiplier": 1,
        "retryableStatusCodes": ["UNAVAILABLE"],
    }
    return json.dumps({"methodConfig": [{"name": ECHO, "retryPolicy": policy}]})


def hedging_policy(delay: str, non_fatal: tuple[str, ...] = ("UNAVAILABLE",)) -> str:
    policy = {"maxAttempts": 3, "hedgingDelay": delay, "nonFatalStatusCodes": list(non_fatal)}
    return json.dumps({"methodConfig": [{"name": ECHO, "hedgingPolicy": policy}]})


def start(channel: grpclb.Channel, kind: str, **kwargs: Any) -> Any:
    """A unary future or a response stream (nobody reads it) of one Echo request."""
    echo = stub(channel)
    multicallable = echo.Unary.future if kind == "future" else echo.ServerStream
    return multicallable(echo_pb2.EchoRequest(count=1), **kwargs)


def grants(channel: grpclb.Channel) -> tuple[int, int]:
    balancer = channel._balancer
    return balancer._retries_in_flight, balancer._retries_waiting


@pytest.mark.parametrize(
    "config", [retry_policy(), hedging_policy("0.05s")], ids=["retry", "hedging"]
)
@pytest.mark.parametrize("kind", ["future", "stream"])
def test_no_attempt_goes_out_after_a_cancel_that_returned_true(
    pods: FleetFactory, dns_server: Any, monkeypatch: pytest.MonkeyPatch, config: str, kind: str
) -> None:
    # The cancel lands, on another thread, while the next attempt picks its pod: the
    # attempt was sent anyway (and cancelled a moment later).
    fleet, target = serve(pods, dns_server, 3, "unavailable")
    with grpclb.channel(target, service_config=config) as channel:
        wait_ready(channel, 3)
        fleet.reset_stats()
        balancer, made = channel._balancer, threading.Event()
        box: dict[str, Any] = {}
        start_call = balancer.start_call

        def cancel_while_picking(*args: Any, **kwargs: Any) -> Any:
            retry = kwargs.get("retry", args[3] if len(args) > 3 else False)
            if retry and "returned" not in box:
                made.wait(5)
                other = threading.Thread(target=lambda: box.update(returned=box["call"].cancel()))
                other.start()
                other.join(5)
            return start_call(*args, **kwargs)

        monkeypatch.setattr(balancer, "start_call", cancel_while_picking)
        request = echo_pb2.EchoRequest(count=1)
        if kind == "future":
            box["call"] = call = stub(channel).Unary.future(request, timeout=4)
            made.set()
            with pytest.raises(grpc.FutureCancelledError):
                call.result(timeout=5)
        else:
            box["call"] = call = stub(channel).ServerStream(request, timeout=4)
            made.set()
            with pytest.raises(grpc.RpcError) as raised:
                list(call)
            assert raised.value.code() is grpc.StatusCode.CANCELLED
        assert box["returned"] is True and call.cancelled()
        wait_until(lambda: channel.stats().in_flight == 0 and grants(channel) == (0, 0))
    assert sum(p.stats().calls for p in fleet) == 1  # the attempt picked then was never sent


def test_a_stream_cancelled_while_its_reader_waits_out_a_backoff_reports_cancelled(
    pods: FleetFactory, dns_server: Any
) -> None:
    # cancel() found the failed attempt, returned False, and code() named its failure,
    # though the reader got CANCELLED.
    _fleet, target = serve(pods, dns_server, 3, "unavailable_pushback", 2000)
    with grpclb.channel(target, service_config=retry_policy()) as channel:
        wait_ready(channel, 3)
        call = stub(channel).ServerStream(echo_pb2.EchoRequest(count=1), timeout=10)
        got: list[grpc.StatusCode] = []

        def read() -> None:
            try:
                list(call)
            except grpc.RpcError as error:
                got.append(error.code())

        reader = threading.Thread(target=read)
        reader.start()
        # The reader waits out the server's 2 s pushback before the retry.
        wait_until(lambda: channel._balancer.counters["retries"] == 1 and call._call is None)
        assert not call.done()
        assert call.cancel() is True
        reader.join(5)
        assert got == [grpc.StatusCode.CANCELLED]
        assert call.cancelled() and call.code() is grpc.StatusCode.CANCELLED
        assert channel._balancer.counters["calls"] == 1
        wait_until(lambda: grants(channel) == (0, 0))


@pytest.mark.parametrize("kind", ["future", "stream"])
def test_a_cancel_ends_a_retry_waiting_for_a_ready_pod_and_gives_its_grant_back(
    pods: FleetFactory, dns_server: Any, kind: str
) -> None:
    # The waiting thread never looked at the call: the grant stayed taken, and once a
    # pod came the cancelled call's retry started on it.
    fleet, target = serve(pods, dns_server, 1, "unavailable_pushback", 1500)  # time to stop it
    with grpclb.channel(target, service_config=retry_policy()) as channel:
        wait_ready(channel, 1)
        call = start(channel, kind, wait_for_ready=True)  # no deadline: it may wait for good
        wait_until(lambda: channel._balancer.counters["retries"] >= 1)
        fleet[0].stop()  # its retry finds no READY pod, and waits for one
        waiting = "grpclb wait for pod /grpclb.testing.Echo/"
        wait_until(lambda: any(t.name.startswith(waiting) for t in threading.enumerate()))
        calls = channel._balancer.counters["calls"]
        assert call.cancel() is True and call.cancelled()
        wait_until(lambda: not any(t.name.startswith(waiting) for t in threading.enumerate()))
        assert grants(channel) == (0, 0)
        assert channel._balancer.counters["calls"] == calls  # nothing started after it


def test_a_hedge_never_starts_after_the_calls_deadline(pods: FleetFactory, dns_server: Any) -> None:
    # The first attempt ends at the deadline with a non-fatal status, so the next hedge is
    # due at once: it was sent with no time left.
    _fleet, target = serve(pods, dns_server, 3, "hang")
    config = hedging_policy("5s", ("UNAVAILABLE", "DEADLINE_EXCEEDED"))
    with grpclb.channel(target, service_config=config) as channel:
        wait_ready(channel, 3)
        for _ in range(5):
            before = channel._balancer.counters["calls"]
            with pytest.raises(grpc.RpcError) as raised:
                stub(channel).Unary(echo_pb2.EchoRequest(), timeout=0.05)
            assert raised.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED
            assert channel._balancer.counters["calls"] == before + 1
        wait_until(lambda: channel.stats().in_flight == 0 and grants(channel) == (0, 0))


def test_an_unread_stream_between_attempts_answers_cancelled_and_result_at_once(
    pods: FleetFactory, dns_server: Any
) -> None:
    # Both waited for the next attempt to start, through the server's whole pushback.
    _fleet, target = serve(pods, dns_server, 3, "unavailable_pushback", 2000)
    with grpclb.channel(target, service_config=retry_policy()) as channel:
        wait_ready(channel, 3)
        call = stub(channel).ServerStream(echo_pb2.EchoRequest(count=1), timeout=10)
        wait_until(lambda: channel._balancer.counters["retries"] == 1)
        assert call.cancelled() is False
        with pytest.raises(grpc.FutureTimeoutError):
            call.result(timeout=0.01)
        assert channel._balancer.counters["calls"] == 1  # still within the pushback
        assert call.cancel() is True


@pytest.mark.parametrize("kind", ["future", "stream"])
def test_a_cancel_during_a_backoff_gives_the_retry_grant_back_at_once(
    pods: FleetFactory, dns_server: Any, kind: str
) -> None:
    # The grant came back only when the backoff's timer fired (here the server's 2 s), and
    # after the call's callbacks ran: a call started from one met a fuller budget.
    _fleet, target = serve(pods, dns_server, 3, "unavailable_pushback", 2000)
    with grpclb.channel(target, service_config=retry_policy()) as channel:
        wait_ready(channel, 3)
        call = start(channel, kind, timeout=10)  # a stream nobody reads: retried in background
        wait_until(lambda: channel._balancer.counters["retries"] == 1)
        wait_until(lambda: channel.stats().in_flight == 0)  # the first attempt was released
        assert grants(channel) == (1, 1)  # granted, waiting out the backoff
        seen: list[Any] = []
        call.add_done_callback(lambda _: seen.append(grants(channel)))
        assert call.cancel() is True
        assert seen == [(0, 0)] and grants(channel) == (0, 0)
        assert channel._balancer.counters["calls"] == 1


@pytest.mark.parametrize("kind", ["future", "stream"])
def test_a_call_ended_by_closing_its_channel_is_not_reported_cancelled(
    pods: FleetFactory, dns_server: Any, kind: str
) -> None:
    # As grpcio's own calls: CANCELLED "Channel closed!", but cancelled() is False.
    fleet, target = serve(pods, dns_server, 1)
    channel = grpclb.channel(target, service_config=retry_policy())
    try:
        wait_ready(channel, 1)
        fleet[0].stop()
        wait_until(lambda: all(e.state != "ready" for e in channel.stats().endpoints))
        call = start(channel, kind, wait_for_ready=True)  # waits for a READY pod
        waiting = "grpclb wait for pod /grpclb.testing.Echo/"
        wait_until(lambda: any(t.name.startswith(waiting) for t in threading.enumerate()))
    finally:
        channel.close()
    wait_until(call.done)
    assert call.code() is grpc.StatusCode.CANCELLED and call.cancelled() is False


def test_cancelling_calls_that_wait_for_no_pod_leaves_the_channels_thread_asleep(
    pods: FleetFactory, dns_server: Any
) -> None:
    # Each cancel woke the channel's maintenance thread for a full pass over the pods.
    _fleet, target = serve(pods, dns_server, 2, "hang")
    with grpclb.channel(target, service_config=retry_policy()) as channel:
        wait_ready(channel, 2)
        passes = [0]
        maintain_once = channel._maintain_once

        def counted(schedule: Any) -> float:
            passes[0] += 1
            return float(maintain_once(schedule))

        channel._maintain_once = counted  # type: ignore[method-assign]
        for _ in range(100):
            assert stub(channel).Unary.future(echo_pb2.EchoRequest(), timeout=5).cancel()
        assert passes[0] <= 5  # its own timer's passes only (100 before the fix)
        wait_until(lambda: channel.stats().in_flight == 0)


@pytest.mark.parametrize("kind", ["future", "blocking"])
def test_a_hedged_call_ends_when_the_servers_pushback_outlasts_its_deadline(
    pods: FleetFactory, dns_server: Any, kind: str
) -> None:
    # The next hedge was armed for after the pushback, past the deadline: the call
    # waited the whole pushback (2 s) to fail.
    _fleet, target = serve(pods, dns_server, 3, "unavailable_pushback", 2000)
    with grpclb.channel(target, service_config=hedging_policy("0.05s")) as channel:
        wait_ready(channel, 3)
        started = time.monotonic()
        with pytest.raises(grpc.RpcError) as raised:
            if kind == "future":
                stub(channel).Unary.future(echo_pb2.EchoRequest(), timeout=0.3).result()
            else:
                stub(channel).Unary(echo_pb2.EchoRequest(), timeout=0.3)
        assert raised.value.code() is grpc.StatusCode.UNAVAILABLE
        assert time.monotonic() - started < 1.0  # well before the 2 s pushback ends
        assert channel._balancer.counters["calls"] == 1
        wait_until(lambda: channel.stats().in_flight == 0 and grants(channel) == (0, 0))


def test_a_stream_cancelled_while_its_failed_attempts_retry_is_decided_is_cancelled(
    pods: FleetFactory, dns_server: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # cancel() found the failed attempt and returned False, yet the call ended CANCELLED.
    _fleet, target = serve(pods, dns_server, 3, "unavailable")
    with grpclb.channel(target, service_config=retry_policy("0.5s")) as channel:
        wait_ready(channel, 3)
        balancer = channel._balancer
        reserve_retry, deciding, go_on = (
            balancer.reserve_retry,
            threading.Event(),
            threading.Event(),
        )

        def held_reserve_retry() -> bool:  # the reader, deciding, preempted here
            deciding.set()
            go_on.wait(5)
            return bool(reserve_retry())

        monkeypatch.setattr(balancer, "reserve_retry", held_reserve_retry)
        call = stub(channel).ServerStream(echo_pb2.EchoRequest(count=1), timeout=10)
        got: list[Any] = []

        def read() -> None:
            try:
                got.append(list(call))
            except grpc.RpcError as error:
                got.append(error.code())

        reader = threading.Thread(target=read)
        reader.start()
        assert deciding.wait(5)
        returned = call.cancel()
        go_on.set()
        reader.join(5)
        assert returned is True and call.cancelled() and got == [grpc.StatusCode.CANCELLED]
        wait_until(lambda: grants(channel) == (0, 0))


def test_a_cancel_that_loses_to_the_answer_returns_false_and_the_answer_stands(
    pods: FleetFactory, dns_server: Any
) -> None:
    # cancel() returned True and cancelled() said True, while code() said OK.
    _fleet, target = serve(pods, dns_server, 1, "slow", 200)
    with grpclb.channel(target, service_config=retry_policy()) as channel:
        wait_ready(channel, 1)
        future = stub(channel).Unary.future(echo_pb2.EchoRequest(), timeout=5)
        (attempt,) = list(future._running.values())
        cancel_attempt = attempt.cancel

        def cancel_after_the_answer() -> bool:  # the cancelling thread, preempted here
            wait_until(future.done)  # the answer arrives and settles the call meanwhile
            return bool(cancel_attempt())

        attempt.cancel = cancel_after_the_answer
        seen: list[Any] = []
        future.add_done_callback(lambda f: seen.append((f.cancelled(), f.code())))
        assert future.cancel() is False
        assert not future.cancelled() and future.code() is grpc.StatusCode.OK
        assert seen == [(False, grpc.StatusCode.OK)]


def test_a_cancelled_hedged_future_drops_its_pending_hedge_timer(
    pods: FleetFactory, dns_server: Any
) -> None:
    # The timer lived on until the hedging delay, holding the future.
    _fleet, target = serve(pods, dns_server, 3, "hang")
    with grpclb.channel(target, service_config=hedging_policy("5s")) as channel:
        wait_ready(channel, 3)
        future = stub(channel).Unary.future(echo_pb2.EchoRequest(), timeout=10)
        timer = future._timer
        assert timer is not None and timer.is_alive()  # the next hedge, in 5 s
        assert future.cancel() is True
        timer.join(2)
        assert not timer.is_alive()
        assert channel._balancer.counters["calls"] == 1
        wait_until(lambda: channel.stats().in_flight == 0 and grants(channel) == (0, 0))
