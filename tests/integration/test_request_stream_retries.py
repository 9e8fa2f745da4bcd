"""Client-streaming and bidirectional calls are retried with their messages replayed (A6).

Real pods behind the real DNS server. A request stream is read once from the
caller's iterator and kept (up to ``retry_buffer_bytes``), so a retry on
another pod sends every message again, in order, then reads on; past the
limit, or after a response message, the call is committed and not retried.
"""

from __future__ import annotations

import asyncio
import gc
import json
import threading
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent import futures
from typing import Any

import grpc
import pytest

import grpclb
import grpclb.aio
from grpclb.aio.requests import _WRITERS
from grpclb.testing import SERVICE_NAME, PodFleet, RequestPipe, echo_pb2
from tests.helpers import drive, serve, stub, until, wait_ready, wait_until

FleetFactory = Callable[..., PodFleet]
UNAVAILABLE = grpc.StatusCode.UNAVAILABLE
# Retries on another pod, every time: ejection would hide the failing pod from later calls.
KEEP_PODS = {
    "policy": "round_robin",
    "consecutive_failures": 0,
    "retry_budget_min_concurrency": 100,
}


def requests(*messages: str) -> Iterator[echo_pb2.EchoRequest]:
    for message in messages:
        yield echo_pb2.EchoRequest(message=message)


async def async_requests(*messages: str) -> AsyncIterator[echo_pb2.EchoRequest]:
    for message in messages:
        await asyncio.sleep(0)
        yield echo_pb2.EchoRequest(message=message)


def calls_at(fleet: PodFleet) -> list[int]:
    return [p.stats().calls for p in fleet]


def test_sync_request_streams_are_retried_with_every_message_replayed(
    pods: FleetFactory, dns_server: Any
) -> None:
    fleet, target = serve(pods, dns_server, 3)
    fleet[0].set_mode("unavailable")
    with grpclb.channel(target, **KEEP_PODS) as channel:
        wait_ready(channel, 3)
        echo = stub(channel)
        fleet.reset_stats()
        for _ in range(6):
            assert echo.ClientStream(requests("a", "b", "c"), timeout=5).message == "abc"
            reply, call = echo.ClientStream.with_call(requests("d", "e"), timeout=5)
            assert (reply.message, call.code()) == ("de", grpc.StatusCode.OK)
            future = echo.ClientStream.future(requests("f", "g", "h", "i"), timeout=5)
            assert future.result(timeout=5).message == "fghi"
            replies = list(echo.BidiStream(requests("x", "y", "z"), timeout=5))
            assert [r.message for r in replies] == ["x", "y", "z"]
        assert calls_at(fleet)[0] >= 6  # the failing pod had its share: they were retried


def test_sync_ping_pong_is_retried_while_the_caller_waits_for_an_answer(
    pods: FleetFactory, dns_server: Any
) -> None:
    fleet, target = serve(pods, dns_server, 3)
    fleet[0].set_mode("unavailable")
    with grpclb.channel(target, **KEEP_PODS) as channel:
        wait_ready(channel, 3)
        fleet.reset_stats()
        for _ in range(6):
            pipe = RequestPipe()
            responses = stub(channel).BidiStream(pipe, timeout=10)
            for message in ("ping", "pong", "ping"):
                pipe.add(message)  # the next message only after the answer to this one
                assert next(responses).message == message
            pipe.close()
            assert list(responses) == []
        assert calls_at(fleet)[0] >= 2


def test_asyncio_request_streams_are_retried_with_every_message_replayed(
    pods: FleetFactory, dns_server: Any
) -> None:
    fleet, target = serve(pods, dns_server, 3)
    fleet[0].set_mode("unavailable")

    async def scenario() -> None:
        async with grpclb.aio.channel(target, **KEEP_PODS) as channel:
            await channel.channel_ready()
            echo = stub(channel)
            for _ in range(6):
                reply = await echo.ClientStream(async_requests("a", "b", "c"), timeout=5)
                assert reply.message == "abc"
                reply = await echo.ClientStream(requests("d", "e"), timeout=5)  # a sync iterator
                assert reply.message == "de"
                bidi = echo.BidiStream(requests("x", "y"), timeout=5)
                assert [r.message async for r in bidi] == ["x", "y"]
                # grpc.aio alone reports most of these INTERNAL (a write racing the pod's
                # answer); grpclb writes them itself and sees the pod's UNAVAILABLE.
                bidi = echo.BidiStream(async_requests("p", "q", "r"), timeout=5)
                assert [r.message async for r in bidi] == ["p", "q", "r"]

    fleet.reset_stats()
    drive(scenario())
    assert calls_at(fleet)[0] >= 8


def test_asyncio_writes_are_kept_and_retried_too(pods: FleetFactory, dns_server: Any) -> None:
    fleet, target = serve(pods, dns_server, 3)
    fleet[0].set_mode("unavailable")

    async def scenario() -> None:
        async with grpclb.aio.channel(target, **KEEP_PODS) as channel:
            await channel.channel_ready()
            echo = stub(channel)
            for _ in range(6):
                writer = echo.ClientStream(timeout=5)
                for message in ("a", "b", "c"):
                    await writer.write(echo_pb2.EchoRequest(message=message))
                await writer.done_writing()
                assert (await writer).message == "abc"
                # Ping-pong: the next message is written only after the answer.
                pingpong = echo.BidiStream(timeout=5)
                for message in ("ping", "pong", "ping"):
                    await pingpong.write(echo_pb2.EchoRequest(message=message))
                    assert (await pingpong.read()).message == message
                await pingpong.done_writing()
                assert await pingpong.read() is grpc.aio.EOF
                assert await pingpong.code() is grpc.StatusCode.OK
                with pytest.raises(asyncio.InvalidStateError):
                    await pingpong.write(echo_pb2.EchoRequest())  # as grpc.aio says it

    fleet.reset_stats()
    drive(scenario())
    assert calls_at(fleet)[0] >= 3  # the failing pod had its share: they were retried


def test_an_asyncio_call_nobody_awaits_yet_is_retried_in_the_background(
    pods: FleetFactory, dns_server: Any
) -> None:
    fleet, target = serve(pods, dns_server, 3)
    fleet[0].set_mode("unavailable")

    async def scenario() -> list[str]:
        async with grpclb.aio.channel(target, **KEEP_PODS) as channel:
            await channel.channel_ready()
            echo = stub(channel)
            pods_seen = []
            for i in range(6):
                call = echo.Unary(echo_pb2.EchoRequest(message=str(i)), timeout=5)
                # Awaited only once it is over, as grpcio's own retries would have it.
                await until(call.done, 5, "the call to end")
                pods_seen.append((await call).pod)
            return pods_seen

    fleet.reset_stats()
    seen = drive(scenario())
    assert fleet[0].address not in seen and len(seen) == 6
    assert calls_at(fleet)[0] >= 2  # it failed there, unawaited, and was retried


def test_a_retry_policy_on_a_request_stream_makes_exactly_max_attempts(
    pods: FleetFactory, dns_server: Any
) -> None:
    fleet, target = serve(pods, dns_server, 3)
    for pod in fleet:
        pod.set_mode("unavailable")
    retry = {
        "maxAttempts": 4,
        "initialBackoff": "0.01s",
        "maxBackoff": "0.05s",
        "backoffMultiplier": 2,
        "retryableStatusCodes": ["UNAVAILABLE"],
    }
    method = {"service": "grpclb.testing.Echo", "method": "ClientStream"}
    config = json.dumps({"methodConfig": [{"name": [method], "retryPolicy": retry}]})
    options = [("grpc.service_config", config)]
    with grpclb.channel(target, options=options, **KEEP_PODS) as channel:
        wait_ready(channel, 3)
        fleet.reset_stats()
        with pytest.raises(grpc.RpcError) as raised:
            stub(channel).ClientStream(requests("a", "b"), timeout=5)
        assert raised.value.code() is UNAVAILABLE
        assert sum(calls_at(fleet)) == 4

    async def in_asyncio() -> int:
        async with grpclb.aio.channel(target, options=options, **KEEP_PODS) as channel:
            await channel.channel_ready()
            await asyncio.to_thread(fleet.reset_stats)
            with pytest.raises(grpc.aio.AioRpcError):
                await stub(channel).ClientStream(async_requests("a", "b"), timeout=5)
            return sum(await asyncio.to_thread(calls_at, fleet))

    assert drive(in_asyncio()) == 4


def test_a_request_stream_over_the_buffer_limit_is_not_retried(
    pods: FleetFactory, dns_server: Any
) -> None:
    fleet, target = serve(pods, dns_server, 2)
    for pod in fleet:
        pod.set_mode("unavailable")
    settings = {**KEEP_PODS, "retry_buffer_bytes": 64}
    with grpclb.channel(target, **settings) as channel:
        wait_ready(channel, 2)
        fleet.reset_stats()
        with pytest.raises(grpc.RpcError):
            stub(channel).ClientStream(requests("x" * 100), timeout=5)  # committed at once
        assert sum(calls_at(fleet)) == 1
        fleet.reset_stats()
        with pytest.raises(grpc.RpcError):
            stub(channel).ClientStream(requests("x" * 10), timeout=5)  # kept: retried twice
        assert sum(calls_at(fleet)) == 3


def test_a_request_iterator_that_raises_is_not_retried(pods: FleetFactory, dns_server: Any) -> None:
    fleet, target = serve(pods, dns_server, 2)

    def broken() -> Iterator[echo_pb2.EchoRequest]:
        yield echo_pb2.EchoRequest(message="a")
        raise RuntimeError("the caller's own bug")

    settings = {**KEEP_PODS, "retry_codes": "UNAVAILABLE,UNKNOWN"}
    with grpclb.channel(target, **settings) as channel:
        wait_ready(channel, 2)
        fleet.reset_stats()
        with pytest.raises(grpc.RpcError) as raised:
            stub(channel).ClientStream(broken(), timeout=5)
        assert raised.value.code() is grpc.StatusCode.UNKNOWN  # grpcio's, as without grpclb
        wait_until(lambda: sum(calls_at(fleet)) == 1, what="the one attempt counted")
        assert sum(calls_at(fleet)) == 1
        assert [e.failures for e in channel.stats().endpoints] == [0, 0]  # the caller's own


def test_a_pod_lost_mid_stream_gets_the_stream_resent_to_another_and_read_on(
    pods: FleetFactory, dns_server: Any
) -> None:
    fleet, target = serve(pods, dns_server, 2)
    sent_two, go_on = threading.Event(), threading.Event()

    def paced() -> Iterator[echo_pb2.EchoRequest]:
        yield echo_pb2.EchoRequest(message="a")
        yield echo_pb2.EchoRequest(message="b")
        sent_two.set()
        go_on.wait(10)  # the caller has more to say, later
        yield echo_pb2.EchoRequest(message="c")

    with grpclb.channel(target, **KEEP_PODS) as channel:
        wait_ready(channel, 2)
        fleet.reset_stats()
        future = stub(channel).ClientStream.future(paced(), timeout=10)
        assert sent_two.wait(5)
        serving = wait_until(
            lambda: [p for p in fleet if p.stats().in_flight == 1], what="the serving pod"
        )[0]
        serving.stop()  # the pod goes away with the call half sent
        wait_until(
            lambda: [p for p in fleet if p is not serving and p.stats().calls == 1],
            what="the retry on the other pod",
        )
        go_on.set()
        reply = future.result(timeout=10)
        assert (reply.message, reply.index) == ("abc", 3)
        assert reply.pod != serving.address


def test_asyncio_refuses_writes_on_a_call_given_an_iterator_as_grpc_aio_does(
    pods: FleetFactory, dns_server: Any
) -> None:
    _, target = serve(pods, dns_server, 1)

    async def scenario(retries: int) -> None:
        # retries=2: grpclb writes the iterator; retries=0: grpc.aio writes it.
        async with grpclb.aio.channel(target, retries=retries) as channel:
            await channel.channel_ready()
            call = stub(channel).BidiStream(async_requests("a"), timeout=5)
            with pytest.raises(grpc.aio.UsageError):
                await call.write(echo_pb2.EchoRequest(message="b"))
            with pytest.raises(grpc.aio.UsageError):
                await call.done_writing()
            assert [r.message async for r in call] == ["a"]

    drive(scenario(2))
    drive(scenario(0))


def test_an_asyncio_request_stream_dropped_by_its_caller_is_cancelled_and_released(
    pods: FleetFactory, dns_server: Any
) -> None:
    fleet, target = serve(pods, dns_server, 1)

    async def scenario() -> None:
        async with grpclb.aio.channel(target) as channel:
            await channel.channel_ready()
            echo = stub(channel)
            for style in ("write", "iterator"):
                # No deadline: only its collection can end it, while grpclb's writer
                # waits for the caller's next message.
                if style == "write":
                    call = echo.BidiStream()
                    await call.write(echo_pb2.EchoRequest(message="a"))
                else:
                    call = echo.BidiStream(async_requests_forever())
                assert (await call.read()).message == "a"
                del call
                gc.collect()
                await until(lambda: channel.stats().in_flight == 0, 5, "the pod released")
                await asyncio.to_thread(
                    wait_until, lambda: fleet[0].stats().in_flight == 0, 5, "the pod to see it end"
                )

    drive(scenario())


async def async_requests_forever() -> AsyncIterator[echo_pb2.EchoRequest]:
    yield echo_pb2.EchoRequest(message="a")
    await asyncio.Event().wait()  # the caller never says more
    yield echo_pb2.EchoRequest(message="never")  # pragma: no cover


def test_request_streams_of_a_custom_serializer_are_sized_by_it(dns_server: Any) -> None:
    """Non-protobuf messages are sized by the method's request serializer."""
    sized: list[str] = []

    def serialize(text: str) -> bytes:
        sized.append(text)
        return text.encode()

    server = grpc.server(futures.ThreadPoolExecutor(4))
    join = grpc.stream_unary_rpc_method_handler(
        lambda requests, _: "".join(requests).upper(),
        request_deserializer=bytes.decode,
        response_serializer=str.encode,
    )
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler("demo.Text", {"Join": join}),)
    )
    port = server.add_insecure_port("127.0.0.2:0")
    server.start()
    try:
        dns_server.set_records(SERVICE_NAME, ["127.0.0.2"])
        target = dns_server.target(SERVICE_NAME, port)
        with grpclb.channel(target, retries=2) as channel:
            wait_ready(channel, 1)
            method = channel.stream_unary(
                "/demo.Text/Join", request_serializer=serialize, response_deserializer=bytes.decode
            )
            assert method(iter(["ab", "cd"]), timeout=5) == "ABCD"

        async def in_asyncio() -> str:
            async with grpclb.aio.channel(target, retries=2) as channel:
                method = channel.stream_unary(
                    "/demo.Text/Join",
                    request_serializer=serialize,
                    response_deserializer=bytes.decode,
                )
                return str(await method(iter(["ef"]), timeout=5, wait_for_ready=True))

        assert drive(in_asyncio()) == "EF"
        assert "ab" in sized and "ef" in sized  # (sized, and serialized, by the request's)
    finally:
        server.stop(0)


class _PassThrough(grpc.aio.StreamUnaryClientInterceptor, grpc.aio.StreamStreamClientInterceptor):
    async def intercept_stream_unary(self, proceed: Any, details: Any, requests: Any) -> Any:
        return await proceed(details, requests)

    async def intercept_stream_stream(self, proceed: Any, details: Any, requests: Any) -> Any:
        return await proceed(details, requests)


def test_asyncio_writes_through_a_stream_interceptor(pods: FleetFactory, dns_server: Any) -> None:
    """grpc.aio's intercepted write() asks the call whether it was half-closed."""
    fleet, target = serve(pods, dns_server, 3)
    fleet[0].set_mode("unavailable")

    async def scenario(retries: int) -> list[str]:
        settings = {**KEEP_PODS, "retries": retries, "interceptors": [_PassThrough()]}
        async with grpclb.aio.channel(target, **settings) as channel:
            await channel.channel_ready()
            echo, replies = stub(channel), []
            for _ in range(3 if retries else 1):
                call = echo.ClientStream(timeout=5, wait_for_ready=True)
                await call.write(echo_pb2.EchoRequest(message="a"))
                await call.write(echo_pb2.EchoRequest(message="b"))
                await call.done_writing()
                replies.append((await call).message)
            return replies

    assert drive(scenario(2)) == ["ab", "ab", "ab"]  # retried past the failing pod
    fleet[0].set_mode("ok")
    assert drive(scenario(0)) == ["ab"]


def test_a_call_whose_pod_answered_headers_before_failing_is_not_retried(
    pods: FleetFactory, dns_server: Any
) -> None:
    """A6: response headers commit the call; the server may have acted on it."""
    fleet, target = serve(pods, dns_server, 2)
    fleet[0].set_mode("headers_then_unavailable")
    with grpclb.channel(target, **KEEP_PODS) as channel:
        wait_ready(channel, 2)
        fleet.reset_stats()
        echo, failed = stub(channel), 0
        for _ in range(4):
            for call in (
                lambda: echo.Unary(echo_pb2.EchoRequest(), timeout=5),
                lambda: echo.ClientStream(requests("a"), timeout=5),
                lambda: echo.Unary.future(echo_pb2.EchoRequest(), timeout=5).result(),
                lambda: list(echo.BidiStream(requests("a"), timeout=5)),
            ):
                try:
                    call()
                except grpc.RpcError as error:
                    assert error.code() is UNAVAILABLE
                    failed += 1
        served = calls_at(fleet)
        assert failed == served[0] > 0 and sum(served) == 16  # no attempt after the headers

    async def in_asyncio() -> tuple[int, int]:
        async with grpclb.aio.channel(target, **KEEP_PODS) as channel:
            await channel.channel_ready()
            await asyncio.to_thread(fleet.reset_stats)
            echo, failed, made = stub(channel), 0, 0
            for _ in range(4):
                for call in (
                    lambda: echo.Unary(echo_pb2.EchoRequest(), timeout=5),
                    lambda: echo.ClientStream(async_requests("a"), timeout=5),
                ):
                    made += 1
                    try:
                        await call()
                    except grpc.aio.AioRpcError as error:
                        assert error.code() is UNAVAILABLE
                        failed += 1
            assert made == 8
            return failed, sum(await asyncio.to_thread(calls_at, fleet))

    failed, served = drive(in_asyncio())
    assert failed > 0 and served == 8  # no attempt after the headers


def test_asyncio_cancel_while_a_failed_attempt_awaits_its_retry_ends_the_call(
    pods: FleetFactory, dns_server: Any
) -> None:
    """cancel() between an attempt's failure and its reader's retry is not lost."""
    fleet, target = serve(pods, dns_server, 2)
    fleet[0].set_mode("unavailable")

    async def scenario() -> tuple[int, Counter[str]]:
        async with grpclb.aio.channel(target, **KEEP_PODS) as channel:
            await channel.channel_ready()
            echo, hits, outcomes = stub(channel), 0, Counter[str]()
            for _ in range(40):
                call: Any = echo.BidiStream(timeout=10)
                reader = asyncio.ensure_future(call.read())
                await call.write(echo_pb2.EchoRequest(message="a"))
                first, in_window = call._attempt, False
                for _ in range(3000):  # the loop turns before the reader resumes
                    if call._attempt is not first:
                        break  # the reader already retried it
                    if first is not None and first.done():
                        in_window = True  # failed (this is the failing pod), not retried yet
                        break
                    await asyncio.sleep(0)
                if not in_window or call.done():
                    call.cancel()
                    reader.cancel()
                    continue
                hits += 1
                assert call.cancel() is True
                with pytest.raises(asyncio.CancelledError):
                    await asyncio.wait_for(reader, 5)
                assert call.done() and call.cancelled()
                outcomes[str(await call.code())] += 1
            await until(lambda: channel.stats().in_flight == 0, 5, "every pod released")
            return hits, outcomes

    hits, outcomes = drive(scenario())
    assert hits > 0 and outcomes == Counter({"StatusCode.CANCELLED": hits})


def test_asyncio_cancel_as_a_retry_replays_its_writes_leaves_no_writer(
    pods: FleetFactory, dns_server: Any
) -> None:
    """grpc.aio never marks a cancelled call's headers sent: nothing may wait for them."""
    fleet, target = serve(pods, dns_server, 2)
    fleet[0].set_mode("unavailable")
    fast = {**KEEP_PODS, "retry_backoff_base": 0.001, "retry_backoff_max": 0.002}

    async def scenario() -> int:
        async with grpclb.aio.channel(target, **fast) as channel:
            await channel.channel_ready()
            echo, hits = stub(channel), 0
            for i in range(40):
                call: Any = echo.BidiStream(timeout=30)
                write = asyncio.ensure_future(call.write(echo_pb2.EchoRequest(message="a")))
                for _ in range(2000):
                    if call._written.replay is not None:
                        break
                    await asyncio.sleep(0)
                else:
                    call.cancel()
                    await asyncio.gather(write, return_exceptions=True)
                    continue
                hits += 1
                for _ in range(i % 6):
                    await asyncio.sleep(0)
                call.cancel()
                await asyncio.wait_for(asyncio.gather(write, return_exceptions=True), 5)
            await until(lambda: not [t for t in _WRITERS if not t.done()], 5, "writers to end")
            await until(lambda: channel.stats().in_flight == 0, 5, "every pod released")
            return hits

    assert drive(scenario()) > 0
