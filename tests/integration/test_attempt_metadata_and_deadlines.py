"""What a server sees of retries and hedges, and how a deadline ends a call due a retry.

gRFC A6, as gRPC's implementations do it: a retry or hedge carries
``grpc-previous-rpc-attempts`` (absent on the first attempt, then 1, 2, ...);
plain grpcio, with its own retries, runs beside grpclb as the reference. A
call whose next retry would come after its deadline ends at once with its
attempt's status (a documented difference: gRPC waits for the deadline).
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import grpc
import grpc.aio
import pytest

import grpclb
import grpclb.aio
from tests.helpers import code_and_seconds, generic_servers, wait_until

KEY = "grpc-previous-rpc-attempts"
METHOD = "/demo.Attempts/Call"
HOSTS = ("127.0.0.2", "127.0.0.3", "127.0.0.4")


class Script:
    """The servers' shared behaviour: attempt n (from 0) fails with ``fail(n)``'s pushback."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.seen: list[str | None] = []  # each attempt's grpc-previous-rpc-attempts
        self.failures = 0  # attempts that fail UNAVAILABLE before one answers
        self.pushback_ms: str | None = None

    def reset(self, failures: int, pushback_ms: str | None = None) -> None:
        with self._lock:
            self.seen, self.failures, self.pushback_ms = [], failures, pushback_ms

    def handle(self, request: bytes, context: grpc.ServicerContext) -> bytes:
        sent = dict(context.invocation_metadata()).get(KEY)
        with self._lock:
            n = len(self.seen)
            self.seen.append(sent if sent is None else str(sent))
            failing, pushback = n < self.failures, self.pushback_ms
        if failing:
            if pushback is not None:
                context.set_trailing_metadata((("grpc-retry-pushback-ms", pushback),))
            context.abort(grpc.StatusCode.UNAVAILABLE, f"attempt {n} fails")
        return request


@pytest.fixture(scope="module")
def servers() -> Iterator[tuple[Script, str]]:
    script = Script()
    handlers = {"Call": grpc.unary_unary_rpc_method_handler(script.handle)}
    with generic_servers(HOSTS, "demo.Attempts", handlers) as target:
        yield script, target


def retry_config(max_attempts: int = 4, backoff: str = "0.01s") -> str:
    policy = {
        "maxAttempts": max_attempts,
        "initialBackoff": backoff,
        "maxBackoff": backoff,
        "backoffMultiplier": 1,
        "retryableStatusCodes": ["UNAVAILABLE"],
    }
    return json.dumps(
        {"methodConfig": [{"name": [{"service": "demo.Attempts"}], "retryPolicy": policy}]}
    )


def hedge_config(max_attempts: int = 3) -> str:
    policy = {
        "maxAttempts": max_attempts,
        "hedgingDelay": "5s",
        "nonFatalStatusCodes": ["UNAVAILABLE"],
    }
    return json.dumps(
        {"methodConfig": [{"name": [{"service": "demo.Attempts"}], "hedgingPolicy": policy}]}
    )


def sync_channel(target: str, config: str) -> grpc.Channel:
    channel = grpclb.channel(target, service_config=config, policy="round_robin")
    channel.wait_for_endpoints(min_ready=None, timeout=10)
    return channel


def call_of(channel: Any) -> Callable[..., Any]:
    return channel.unary_unary(METHOD)  # bytes in, bytes out


def aio_run(target: str, config: str, body: Callable[[Any], Any]) -> Any:
    async def run() -> Any:
        async with grpclb.aio.channel(target, service_config=config, policy="round_robin") as ch:
            await ch.wait_for_endpoints(min_ready=None, timeout=10)
            return await body(call_of(ch))

    return asyncio.run(run())


async def aio_call_closed_after_its_first_attempt(
    script: Script, target: str, config: str | None = None, settle: float = 0.0
) -> tuple[object, float]:
    """An asyncio call's outcome when its channel closes once the pod saw its first
    attempt (``settle`` seconds later), and the seconds from close() to that outcome."""
    channel = grpclb.aio.channel(target, service_config=config or retry_config())
    await channel.wait_for_endpoints(min_ready=None, timeout=10)

    async def call() -> object:
        try:
            await call_of(channel)(b"x", timeout=20)
            return grpc.StatusCode.OK
        except grpc.aio.AioRpcError as error:
            return error.code()
        except asyncio.CancelledError:
            return asyncio.CancelledError  # what grpc.aio raises for a call close() ends

    task = asyncio.create_task(call())
    for _ in range(1000):  # bounded: 10 s
        if script.seen:
            break
        await asyncio.sleep(0.01)
    await asyncio.sleep(settle)
    closed_at = time.monotonic()
    await channel.close()
    outcome = await asyncio.wait_for(task, 10)
    return outcome, time.monotonic() - closed_at


# --- grpc-previous-rpc-attempts ---------------------------------------------------------


def test_retries_say_how_many_attempts_came_before(servers: tuple[Script, str]) -> None:
    script, target = servers
    expected = [None, "1", "2"]
    with sync_channel(target, retry_config()) as channel:
        call = call_of(channel)
        script.reset(failures=2)
        assert call(b"blocking", timeout=10) == b"blocking"
        assert script.seen == expected
        script.reset(failures=2)
        assert call.future(b"future", timeout=10).result() == b"future"
        assert script.seen == expected
        # A value the caller gave for the key is not what the server sees.
        script.reset(failures=2)
        assert call(b"given", timeout=10, metadata=((KEY, "7"),)) == b"given"
        assert script.seen == ["7", "1", "2"]

    async def body(call: Any) -> Any:
        script.reset(failures=2)
        return await call(b"aio", timeout=10)

    assert aio_run(target, retry_config(), body) == b"aio"
    assert script.seen == expected

    # grpcio's own retries, the reference, send the same.
    script.reset(failures=2)
    with grpc.insecure_channel(target, options=[("grpc.service_config", retry_config())]) as plain:
        assert call_of(plain)(b"plain", timeout=10) == b"plain"
    assert script.seen == expected


def test_hedges_say_how_many_attempts_came_before(servers: tuple[Script, str]) -> None:
    # Each hedge fails at once (non-fatal): the next goes out without waiting for the delay.
    script, target = servers
    with sync_channel(target, hedge_config()) as channel:
        script.reset(failures=2)
        assert call_of(channel)(b"sync", timeout=10) == b"sync"
        assert script.seen == [None, "1", "2"]

    async def body(call: Any) -> Any:
        script.reset(failures=2)
        return await call(b"aio", timeout=10)

    assert aio_run(target, hedge_config(), body) == b"aio"
    assert script.seen == [None, "1", "2"]


def test_first_attempts_carry_no_attempt_count(servers: tuple[Script, str]) -> None:
    script, target = servers
    with sync_channel(target, retry_config()) as channel:
        script.reset(failures=0)
        for _ in range(3):
            call_of(channel)(b"x", timeout=10)
        assert script.seen == [None, None, None]


# --- a retry the deadline would cut ------------------------------------------------------


@pytest.mark.parametrize("flavour", ["sync", "aio"])
def test_a_retry_due_after_the_deadline_is_not_sent_and_the_call_ends_at_once(
    servers: tuple[Script, str], flavour: str
) -> None:
    # The server asks for 5 s before the retry; the call has 2 s. grpclb ends it at once
    # with the attempt's own status (gRPC's implementations wait for the deadline and say
    # DEADLINE_EXCEEDED: docs/service-config.md), holding no retry-budget grant meanwhile.
    script, target = servers
    script.reset(failures=1, pushback_ms="5000")
    config = retry_config()
    if flavour == "sync":
        with sync_channel(target, config) as channel:
            code, seconds = code_and_seconds(lambda: call_of(channel)(b"x", timeout=2))
            stats = channel.stats()
    else:

        async def body(call: Any) -> tuple[grpc.StatusCode, float]:
            started = time.monotonic()
            try:
                await call(b"x", timeout=2)
                code = grpc.StatusCode.OK
            except grpc.aio.AioRpcError as error:
                code = error.code()
            return code, time.monotonic() - started

        code, seconds = aio_run(target, config, body)
        stats = None
    assert code == grpc.StatusCode.UNAVAILABLE
    assert seconds < 1.5  # not at the deadline
    assert script.seen == [None]
    if stats is not None:
        assert stats.retries == 0


def test_a_retry_refused_by_max_attempts_still_fails_with_its_status_at_once(
    servers: tuple[Script, str],
) -> None:
    # Only a retry that would otherwise be made waits for the deadline.
    script, target = servers
    with sync_channel(target, retry_config(max_attempts=2)) as channel:
        script.reset(failures=5, pushback_ms="1")
        code, seconds = code_and_seconds(lambda: call_of(channel)(b"x", timeout=30))
    assert code == grpc.StatusCode.UNAVAILABLE
    assert seconds < 10.0
    assert len(script.seen) == 2


# --- close() during a retry's backoff ----------------------------------------------------


def test_closing_the_channel_ends_a_blocking_call_waiting_out_its_backoff(
    servers: tuple[Script, str],
) -> None:
    # grpcio's close() cancels the calls in flight; one between attempts is one of them.
    script, target = servers
    script.reset(failures=1, pushback_ms="5000")
    channel = sync_channel(target, retry_config())
    ended: list[tuple[grpc.StatusCode, float]] = []
    caller = threading.Thread(
        target=lambda: ended.append(code_and_seconds(lambda: call_of(channel)(b"x", timeout=20)))
    )
    caller.start()
    wait_until(lambda: script.seen, 10, "the first attempt")
    closed_at = time.monotonic()
    channel.close()
    caller.join(timeout=10)
    assert ended, "the call did not end"
    code, _ = ended[0]
    assert code == grpc.StatusCode.CANCELLED
    assert time.monotonic() - closed_at < 2.0  # not after the 5 s pushback
    assert script.seen == [None]


def test_closing_the_channel_ends_an_aio_call_waiting_out_its_backoff(
    servers: tuple[Script, str],
) -> None:
    script, target = servers
    script.reset(failures=1, pushback_ms="5000")

    outcome, seconds = asyncio.run(aio_call_closed_after_its_first_attempt(script, target))
    assert outcome is asyncio.CancelledError  # as plain grpc.aio, whose close() cancels it
    assert seconds < 2.0  # close() and the call both ended without the 5 s pushback
    assert script.seen == [None]


@pytest.mark.parametrize("style", ["future", "stream", "stream being read"])
def test_closing_the_channel_ends_a_sync_future_or_stream_waiting_out_its_backoff(
    servers: tuple[Script, str], style: str
) -> None:
    # A stream nobody reads waits on a timer; a reader blocked in next() waits itself.
    script, target = servers
    script.reset(failures=1, pushback_ms="5000")
    channel = sync_channel(target, retry_config())
    raised: list[BaseException] = []

    def read(stream: Any) -> None:
        try:
            list(stream)
        except grpc.RpcError as error:
            raised.append(error)

    reader = None
    if style == "future":
        call: Any = call_of(channel).future(b"x", timeout=20)
    else:  # a response stream over the same handler: the pod answers unary, read as a stream
        call = channel.unary_stream(METHOD)(b"x", timeout=20)
        if style == "stream being read":
            reader = threading.Thread(target=read, args=(call,))
            reader.start()
    wait_until(lambda: script.seen, 10, "the first attempt")
    closed_at = time.monotonic()
    channel.close()
    if style == "future":
        error = call.exception(timeout=10)
    else:
        if reader is None:
            read(call)
        else:
            reader.join(timeout=10)
        assert raised, "the stream did not end"
        error = raised[0]
    assert error is not None and error.code() == grpc.StatusCode.CANCELLED
    assert time.monotonic() - closed_at < 2.0  # not after the 5 s pushback
    assert script.seen == [None]


def test_closing_the_channel_ends_hedged_calls_waiting_for_their_next_hedge(
    servers: tuple[Script, str],
) -> None:
    # The first hedge fails with a 5 s pushback: nothing runs until the next one is due.
    script, target = servers
    script.reset(failures=1, pushback_ms="5000")
    channel = sync_channel(target, hedge_config())
    future = call_of(channel).future(b"x", timeout=20)
    wait_until(lambda: script.seen, 10, "the first hedge")
    closed_at = time.monotonic()
    channel.close()
    error = future.exception(timeout=10)
    assert error is not None and error.code() == grpc.StatusCode.CANCELLED  # as grpcio's close
    assert time.monotonic() - closed_at < 2.0

    script.reset(failures=1, pushback_ms="5000")

    # The failure reached the driver before close(): it waits for the pushback.
    outcome, seconds = asyncio.run(
        aio_call_closed_after_its_first_attempt(script, target, hedge_config(), settle=0.05)
    )
    assert outcome is asyncio.CancelledError  # as grpc.aio's close() ends its calls
    assert seconds < 2.0
    assert script.seen == [None]
