"""retryPolicy.perAttemptRecvTimeout: an attempt that does not answer in time is retried.

As C core does it (gRPC's service config; Envoy's ``per_try_timeout``): each
attempt of a unary-response call ends after ``perAttemptRecvTimeout`` and is
retried on another pod whatever ``retryableStatusCodes`` says, within
``maxAttempts``, the call's deadline and the retry budget. A server's own
DEADLINE_EXCEEDED is a status like any other. Response streams keep the call's
deadline only. Real grpcio servers stand in for pods: the first attempts hang
(a frozen pod) until their own deadline cancels them.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Iterator
from typing import Any

import grpc
import grpc.aio
import pytest

import grpclb
import grpclb.aio
from tests.helpers import code_and_seconds, generic_servers

KEY = "grpc-previous-rpc-attempts"
SERVICE = "demo.Slow"
HOSTS = ("127.0.0.2", "127.0.0.3", "127.0.0.4")
ATTEMPT_TIMEOUT = 0.3
HANG_LIMIT = 5.0  # a hanging attempt's longest wait, should nothing cancel it


class Script:
    """The servers' shared behaviour: the first ``hangs`` attempts hang, the rest answer."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.seen: list[str | None] = []  # each attempt's grpc-previous-rpc-attempts
        self.hangs = 0
        self.status: grpc.StatusCode | None = None  # answer with this status instead

    def reset(self, hangs: int, status: grpc.StatusCode | None = None) -> None:
        with self._lock:
            self.seen, self.hangs, self.status = [], hangs, status

    def _begin(self, context: grpc.ServicerContext) -> None:
        sent = dict(context.invocation_metadata()).get(KEY)
        with self._lock:
            n = len(self.seen)
            self.seen.append(sent if sent is None else str(sent))
            hang, status = n < self.hangs, self.status
        if hang:
            done = threading.Event()
            context.add_callback(done.set)  # ended by the client (its deadline), or the limit
            done.wait(HANG_LIMIT)
        elif status is not None:
            context.abort(status, "the server's own status")

    def unary(self, request: bytes, context: grpc.ServicerContext) -> bytes:
        self._begin(context)
        return request

    def client_stream(self, requests: Iterator[bytes], context: grpc.ServicerContext) -> bytes:
        body = b"".join(requests)
        self._begin(context)
        return body

    def server_stream(self, request: bytes, context: grpc.ServicerContext) -> Iterator[bytes]:
        for _ in range(4):  # the whole stream takes longer than one attempt's timeout
            time.sleep(ATTEMPT_TIMEOUT / 2)
            yield request


@pytest.fixture(scope="module")
def servers() -> Iterator[tuple[Script, str]]:
    script = Script()
    handlers = {
        "Call": grpc.unary_unary_rpc_method_handler(script.unary),
        "Upload": grpc.stream_unary_rpc_method_handler(script.client_stream),
        "Watch": grpc.unary_stream_rpc_method_handler(script.server_stream),
    }
    with generic_servers(HOSTS, SERVICE, handlers, workers=8) as target:
        yield script, target


def config(max_attempts: int = 3, codes: list[str] | None = None) -> str:
    policy: dict[str, Any] = {
        "maxAttempts": max_attempts,
        "initialBackoff": "0.01s",
        "maxBackoff": "0.01s",
        "backoffMultiplier": 1,
        "perAttemptRecvTimeout": f"{ATTEMPT_TIMEOUT}s",
    }
    if codes is not None:
        policy["retryableStatusCodes"] = codes
    return json.dumps({"methodConfig": [{"name": [{"service": SERVICE}], "retryPolicy": policy}]})


@pytest.mark.parametrize("style", ["blocking", "with_call", "future", "stream-unary"])
@pytest.mark.parametrize("codes", [["UNAVAILABLE"], None])
def test_sync_attempt_that_hangs_is_retried_on_another_pod(servers, style, codes):
    script, target = servers
    script.reset(hangs=1)
    with grpclb.channel(target, service_config=config(codes=codes), policy="round_robin") as ch:
        ch.wait_for_endpoints(min_ready=None, timeout=10)
        unary = ch.unary_unary(f"/{SERVICE}/Call")
        upload = ch.stream_unary(f"/{SERVICE}/Upload")
        calls = {
            "blocking": lambda: unary(b"x", timeout=10),
            "with_call": lambda: unary.with_call(b"x", timeout=10),
            "future": lambda: unary.future(b"x", timeout=10).result(),
            "stream-unary": lambda: upload(iter([b"a", b"b"]), timeout=10),
        }
        code, seconds = code_and_seconds(calls[style])
    assert code is grpc.StatusCode.OK
    assert script.seen == [None, "1"]  # the hung attempt, then one retry
    assert ATTEMPT_TIMEOUT * 0.9 <= seconds < ATTEMPT_TIMEOUT + 2.0


@pytest.mark.parametrize("method", ["Call", "Upload"])
def test_aio_attempt_that_hangs_is_retried_on_another_pod(servers, method):
    script, target = servers
    script.reset(hangs=1)

    async def main() -> tuple[grpc.StatusCode, float]:
        policy = config(codes=["UNAVAILABLE"])
        async with grpclb.aio.channel(target, service_config=policy, policy="round_robin") as ch:
            await ch.wait_for_endpoints(min_ready=None, timeout=10)
            started = time.monotonic()
            if method == "Call":
                answer = await ch.unary_unary(f"/{SERVICE}/Call")(b"x", timeout=10)
            else:
                answer = await ch.stream_unary(f"/{SERVICE}/Upload")(iter([b"a", b"b"]), timeout=10)
            assert answer in (b"x", b"ab")
            return grpc.StatusCode.OK, time.monotonic() - started

    code, seconds = asyncio.run(asyncio.wait_for(main(), 30))
    assert code is grpc.StatusCode.OK
    assert script.seen == [None, "1"]
    assert ATTEMPT_TIMEOUT * 0.9 <= seconds < ATTEMPT_TIMEOUT + 2.0


def test_aio_call_nobody_awaits_yet_is_retried_in_the_background(servers):
    script, target = servers
    script.reset(hangs=1)

    async def main() -> bytes:
        policy = config(codes=["UNAVAILABLE"])
        async with grpclb.aio.channel(target, service_config=policy, policy="round_robin") as ch:
            await ch.wait_for_endpoints(min_ready=None, timeout=10)
            call = ch.unary_unary(f"/{SERVICE}/Call")(b"x", timeout=10)
            # Its first attempt times out while nobody awaits it.
            deadline = time.monotonic() + 5
            while len(script.seen) < 2 and time.monotonic() < deadline:
                await asyncio.sleep(0.02)
            return await call  # type: ignore[no-any-return]

    assert asyncio.run(asyncio.wait_for(main(), 30)) == b"x"
    assert script.seen == [None, "1"]


def test_every_attempt_hanging_fails_after_max_attempts_not_at_the_deadline(servers):
    script, target = servers
    script.reset(hangs=10)
    with grpclb.channel(target, service_config=config(max_attempts=3), policy="round_robin") as ch:
        ch.wait_for_endpoints(min_ready=None, timeout=10)
        code, seconds = code_and_seconds(
            lambda: ch.unary_unary(f"/{SERVICE}/Call")(b"x", timeout=10)
        )
    assert code is grpc.StatusCode.DEADLINE_EXCEEDED
    assert script.seen == [None, "1", "2"]
    assert 3 * ATTEMPT_TIMEOUT * 0.9 <= seconds < 3 * ATTEMPT_TIMEOUT + 2.0  # not 10 s


def test_aio_every_attempt_hanging_fails_after_max_attempts(servers):
    script, target = servers
    script.reset(hangs=10)

    async def main() -> grpc.StatusCode:
        policy = config(max_attempts=2)
        async with grpclb.aio.channel(target, service_config=policy, policy="round_robin") as ch:
            await ch.wait_for_endpoints(min_ready=None, timeout=10)
            try:
                await ch.unary_unary(f"/{SERVICE}/Call")(b"x", timeout=10)
            except grpc.aio.AioRpcError as error:
                return error.code()
            return grpc.StatusCode.OK

    started = time.monotonic()
    assert asyncio.run(asyncio.wait_for(main(), 30)) is grpc.StatusCode.DEADLINE_EXCEEDED
    assert script.seen == [None, "1"]
    assert time.monotonic() - started < 2 * ATTEMPT_TIMEOUT + 5.0


def test_servers_own_deadline_exceeded_is_a_status_not_a_timeout(servers):
    script, target = servers
    script.reset(hangs=0, status=grpc.StatusCode.DEADLINE_EXCEEDED)
    policy = config(codes=["UNAVAILABLE"])
    with grpclb.channel(target, service_config=policy, policy="round_robin") as ch:
        ch.wait_for_endpoints(min_ready=None, timeout=10)
        code, _ = code_and_seconds(lambda: ch.unary_unary(f"/{SERVICE}/Call")(b"x", timeout=10))
    assert code is grpc.StatusCode.DEADLINE_EXCEEDED
    assert script.seen == [None]  # answered at once: not retryable, not retried


def test_call_deadline_shorter_than_the_attempt_timeout_ends_the_call(servers):
    script, target = servers
    script.reset(hangs=10)
    with grpclb.channel(target, service_config=config(), policy="round_robin") as ch:
        ch.wait_for_endpoints(min_ready=None, timeout=10)
        call = ch.unary_unary(f"/{SERVICE}/Call")
        code, seconds = code_and_seconds(lambda: call(b"x", timeout=ATTEMPT_TIMEOUT / 2))
    assert code is grpc.StatusCode.DEADLINE_EXCEEDED
    assert script.seen == [None]  # the call's own deadline: no time left for a retry
    assert seconds < ATTEMPT_TIMEOUT + 1.0


def test_response_stream_keeps_the_call_deadline(servers):
    script, target = servers
    script.reset(hangs=0)
    with grpclb.channel(target, service_config=config(), policy="round_robin") as ch:
        ch.wait_for_endpoints(min_ready=None, timeout=10)
        stream = ch.unary_stream(f"/{SERVICE}/Watch")(b"x", timeout=10)
        assert list(stream) == [b"x"] * 4  # longer than one attempt's timeout, not cut


def test_aio_response_stream_keeps_the_call_deadline(servers):
    script, target = servers
    script.reset(hangs=0)

    async def main() -> list[bytes]:
        policy = config()
        async with grpclb.aio.channel(target, service_config=policy, policy="round_robin") as ch:
            await ch.wait_for_endpoints(min_ready=None, timeout=10)
            return [m async for m in ch.unary_stream(f"/{SERVICE}/Watch")(b"x", timeout=10)]

    assert asyncio.run(asyncio.wait_for(main(), 30)) == [b"x"] * 4


def test_hung_attempts_are_charged_to_their_pod(servers):
    script, target = servers
    script.reset(hangs=1)
    with grpclb.channel(target, service_config=config(), policy="round_robin") as ch:
        ch.wait_for_endpoints(min_ready=None, timeout=10)
        code, _ = code_and_seconds(lambda: ch.unary_unary(f"/{SERVICE}/Call")(b"x", timeout=10))
        failures = sum(e.failures for e in ch.stats().endpoints)
    assert code is grpc.StatusCode.OK
    assert failures == 1  # the pod that did not answer in time, as a deadline would charge it


def test_aio_call_nobody_awaits_is_done_when_its_attempt_answers(servers):
    """Only a timed-out attempt waits for a decision in the background; an answer settles
    the call at once, as it does without a per-attempt timeout."""
    script, target = servers
    script.reset(hangs=0)

    async def main() -> tuple[bool, list[Any]]:
        policy = config(codes=["UNAVAILABLE"])
        async with grpclb.aio.channel(target, service_config=policy, policy="round_robin") as ch:
            await ch.wait_for_endpoints(min_ready=None, timeout=10)
            call = ch.unary_unary(f"/{SERVICE}/Call")(b"x", timeout=10)
            seen: list[Any] = []
            call.add_done_callback(seen.append)
            await call._attempt  # the attempt itself, not the call: nobody drives the call
            return call.done(), seen

    done, seen = asyncio.run(asyncio.wait_for(main(), 30))
    assert done
    assert len(seen) == 1
