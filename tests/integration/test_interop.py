"""gRPC's interop test cases through grpclb channels, sync and asyncio.

The cases are those of grpc/grpc ``doc/interop-test-descriptions.md``. Each
asserts what the spec's client asserts (where grpc's Python clients check less,
such as "exactly four responses" or "call was successful", the spec's assertion
is kept), and drives the API the way grpc's own Python interop clients do
(``tests/interop/methods.py``: blocking calls, ``future()``, a request iterator
fed from a queue; ``tests_aio/interop/methods.py``: ``write()``/``read()``/
``done_writing()``, async generators, ``await call.code()``). Three real grpcio
TestService servers (``grpclb.testing.interop``) stand behind one name in a real
DNS server (the ``dns_server`` fixture), so every case goes resolver -> balancer
-> pick -> pod.

Every case also runs on a plain grpcio channel (``grpc.insecure_channel``,
``grpc.aio.insecure_channel``) to one server, as a control: a case failing
through grpclb and passing there is a difference between grpclb and grpcio,
to be marked ``xfail(strict=True)`` with its diagnosis, never fixed here.
Each test is bounded by pytest-timeout, asyncio tests also by ``drive``.
"""

from __future__ import annotations

import asyncio
import queue
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any, NamedTuple

import grpc
import grpc.aio
import pytest

import grpclb
import grpclb.aio
from grpclb.testing.interop import empty_pb2, messages_pb2, services_pb2_grpc
from grpclb.testing.interop.server import (
    INITIAL_METADATA_KEY,
    TRAILING_METADATA_KEY,
    InteropServers,
    start_servers,
)
from tests.helpers import drive, ready, wait_ready

pytestmark = pytest.mark.timeout(20)

NAME = "interop.default.svc.cluster.local"
PODS = 3
CASE_TIMEOUT_S = 15.0
COMPRESSABLE = messages_pb2.COMPRESSABLE
OK, UNKNOWN = grpc.StatusCode.OK, grpc.StatusCode.UNKNOWN
CANCELLED, UNIMPLEMENTED = grpc.StatusCode.CANCELLED, grpc.StatusCode.UNIMPLEMENTED
DEADLINE_EXCEEDED = grpc.StatusCode.DEADLINE_EXCEEDED
# The spec's sizes: large_unary, then the four messages of the streaming cases.
LARGE_RESPONSE, LARGE_PAYLOAD = 314159, 271828
RESPONSE_SIZES = (31415, 9, 2653, 58979)
PAYLOAD_SIZES = (27182, 8, 1828, 45904)
STATUS_MESSAGE = "test status message"
SPECIAL_STATUS_MESSAGE = (
    "\t\ntest with whitespace\r\nand Unicode BMP \u263a and non-BMP \U0001f608\t\n"
)
INITIAL_VALUE, TRAILING_VALUE = "test_initial_metadata_value", b"\xab\xab\xab"
ECHO_METADATA = ((INITIAL_METADATA_KEY, INITIAL_VALUE), (TRAILING_METADATA_KEY, TRAILING_VALUE))


class Stubs(NamedTuple):
    test: Any  # services_pb2_grpc.TestServiceStub (generated, untyped)
    unimplemented: Any  # services_pb2_grpc.UnimplementedServiceStub


def stubs(channel: Any) -> Stubs:
    return Stubs(
        services_pb2_grpc.TestServiceStub(channel),
        services_pb2_grpc.UnimplementedServiceStub(channel),
    )


# --- the spec's messages and checks ---------------------------------------------------------


def payload(size: int) -> messages_pb2.Payload:
    return messages_pb2.Payload(body=bytes(size))


def large_request() -> messages_pb2.SimpleRequest:
    return messages_pb2.SimpleRequest(
        response_type=COMPRESSABLE, response_size=LARGE_RESPONSE, payload=payload(LARGE_PAYLOAD)
    )


def duplex_request(
    response_size: int, payload_size: int
) -> messages_pb2.StreamingOutputCallRequest:
    return messages_pb2.StreamingOutputCallRequest(
        response_type=COMPRESSABLE,
        response_parameters=[messages_pb2.ResponseParameters(size=response_size)],
        payload=payload(payload_size),
    )


def status_request(message: str) -> messages_pb2.SimpleRequest:
    """The spec's Echo Status request: "end the call with code 2 and this message"."""
    return messages_pb2.SimpleRequest(
        response_type=COMPRESSABLE,
        response_size=1,
        payload=payload(1),
        response_status=messages_pb2.EchoStatus(code=UNKNOWN.value[0], message=message),
    )


def duplex_status_request() -> messages_pb2.StreamingOutputCallRequest:
    request = duplex_request(1, 1)
    request.response_status.CopyFrom(
        messages_pb2.EchoStatus(code=UNKNOWN.value[0], message=STATUS_MESSAGE)
    )
    return request


def check_payload(response: Any, size: int) -> None:
    assert response.payload.type == COMPRESSABLE
    assert len(response.payload.body) == size


def check_echoed(initial: Any, trailing: Any) -> None:
    assert dict(initial)[INITIAL_METADATA_KEY] == INITIAL_VALUE
    assert dict(trailing)[TRAILING_METADATA_KEY] == TRAILING_VALUE


# --- sync cases -------------------------------------------------------------------------------


class Pipe:
    """A request iterator fed from a queue: the test adds requests as the call runs.

    Closing it half-closes the call; ``with`` closes it even when an assertion fails,
    so grpcio's request-consuming thread never waits for a request that will not come.
    """

    _CLOSED = object()

    def __init__(self) -> None:
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()

    def __iter__(self) -> Iterator[Any]:
        return self

    def __next__(self) -> Any:
        item = self._queue.get()
        if item is self._CLOSED:
            self._queue.put(item)  # every later read ends too
            raise StopIteration
        return item

    def add(self, request: Any) -> None:
        self._queue.put(request)

    def close(self) -> None:
        self._queue.put(self._CLOSED)

    def __enter__(self) -> Pipe:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def empty_unary(stubs: Stubs) -> None:
    assert isinstance(stubs.test.EmptyCall(empty_pb2.Empty()), empty_pb2.Empty)
    response, call = stubs.test.EmptyCall.with_call(empty_pb2.Empty())
    assert isinstance(response, empty_pb2.Empty) and call.code() is OK


def large_unary(stubs: Stubs) -> None:
    check_payload(stubs.test.UnaryCall.future(large_request()).result(), LARGE_RESPONSE)


def client_streaming(stubs: Stubs) -> None:
    requests = (messages_pb2.StreamingInputCallRequest(payload=payload(n)) for n in PAYLOAD_SIZES)
    assert stubs.test.StreamingInputCall(requests).aggregated_payload_size == 74922


def server_streaming(stubs: Stubs) -> None:
    request = messages_pb2.StreamingOutputCallRequest(
        response_type=COMPRESSABLE,
        response_parameters=[messages_pb2.ResponseParameters(size=n) for n in RESPONSE_SIZES],
    )
    responses = stubs.test.StreamingOutputCall(request)
    received = list(responses)
    assert [len(r.payload.body) for r in received] == list(RESPONSE_SIZES)
    for response, size in zip(received, RESPONSE_SIZES, strict=True):
        check_payload(response, size)
    assert responses.code() is OK


def ping_pong(stubs: Stubs) -> None:
    with Pipe() as pipe:
        responses = stubs.test.FullDuplexCall(pipe)
        for response_size, payload_size in zip(RESPONSE_SIZES, PAYLOAD_SIZES, strict=True):
            pipe.add(duplex_request(response_size, payload_size))
            check_payload(next(responses), response_size)
    with pytest.raises(StopIteration):  # exactly four responses, then OK
        next(responses)
    assert responses.code() is OK


def empty_stream(stubs: Stubs) -> None:
    with Pipe() as pipe:
        responses = stubs.test.FullDuplexCall(pipe)
        pipe.close()
        with pytest.raises(StopIteration):
            next(responses)


def cancel_after_begin(stubs: Stubs) -> None:
    with Pipe() as pipe:
        future = stubs.test.StreamingInputCall.future(pipe)
        future.cancel()
        assert future.cancelled()
        assert future.code() is CANCELLED


def cancel_after_first_response(stubs: Stubs) -> None:
    with Pipe() as pipe:
        responses = stubs.test.FullDuplexCall(pipe)
        pipe.add(duplex_request(RESPONSE_SIZES[0], PAYLOAD_SIZES[0]))
        next(responses)
        responses.cancel()
        with pytest.raises(grpc.RpcError) as raised:
            next(responses)
        assert raised.value.code() is CANCELLED


def timeout_on_sleeping_server(stubs: Stubs) -> None:
    with Pipe() as pipe:
        responses = stubs.test.FullDuplexCall(pipe, timeout=0.001)
        pipe.add(messages_pb2.StreamingOutputCallRequest(payload=payload(PAYLOAD_SIZES[0])))
        with pytest.raises(grpc.RpcError) as raised:
            next(responses)
        assert raised.value.code() is DEADLINE_EXCEEDED


def status_code_and_message(stubs: Stubs) -> None:
    future = stubs.test.UnaryCall.future(status_request(STATUS_MESSAGE))
    assert future.code() is UNKNOWN and future.details() == STATUS_MESSAGE
    with Pipe() as pipe:
        responses = stubs.test.FullDuplexCall(pipe)
        pipe.add(duplex_status_request())
    with pytest.raises(grpc.RpcError) as raised:
        next(responses)
    assert raised.value.code() is UNKNOWN
    assert responses.code() is UNKNOWN and responses.details() == STATUS_MESSAGE


def special_status_message(stubs: Stubs) -> None:
    future = stubs.test.UnaryCall.future(status_request(SPECIAL_STATUS_MESSAGE))
    assert future.code() is UNKNOWN and future.details() == SPECIAL_STATUS_MESSAGE


def custom_metadata(stubs: Stubs) -> None:
    future = stubs.test.UnaryCall.future(large_request(), metadata=ECHO_METADATA)
    check_echoed(future.initial_metadata(), future.trailing_metadata())
    with Pipe() as pipe:
        responses = stubs.test.FullDuplexCall(pipe, metadata=ECHO_METADATA)
        pipe.add(duplex_request(LARGE_RESPONSE, LARGE_PAYLOAD))
        next(responses)
    check_echoed(responses.initial_metadata(), responses.trailing_metadata())


def unimplemented_method(stubs: Stubs) -> None:
    assert stubs.test.UnimplementedCall.future(empty_pb2.Empty()).code() is UNIMPLEMENTED


def unimplemented_service(stubs: Stubs) -> None:
    assert stubs.unimplemented.UnimplementedCall.future(empty_pb2.Empty()).code() is UNIMPLEMENTED


SYNC_CASES: dict[str, Callable[[Stubs], None]] = {
    case.__name__: case
    for case in (
        empty_unary,
        large_unary,
        client_streaming,
        server_streaming,
        ping_pong,
        empty_stream,
        cancel_after_begin,
        cancel_after_first_response,
        timeout_on_sleeping_server,
        status_code_and_message,
        special_status_message,
        custom_metadata,
        unimplemented_method,
        unimplemented_service,
    )
}


# --- asyncio cases ----------------------------------------------------------------------------


async def aio_empty_unary(stubs: Stubs) -> None:
    assert isinstance(await stubs.test.EmptyCall(empty_pb2.Empty()), empty_pb2.Empty)


async def aio_large_unary(stubs: Stubs) -> None:
    check_payload(await stubs.test.UnaryCall(large_request()), LARGE_RESPONSE)


async def aio_client_streaming(stubs: Stubs) -> None:
    async def requests() -> AsyncIterator[messages_pb2.StreamingInputCallRequest]:
        for size in PAYLOAD_SIZES:
            yield messages_pb2.StreamingInputCallRequest(payload=payload(size))

    response = await stubs.test.StreamingInputCall(requests())
    assert response.aggregated_payload_size == 74922


async def aio_server_streaming(stubs: Stubs) -> None:
    call = stubs.test.StreamingOutputCall(
        messages_pb2.StreamingOutputCallRequest(
            response_type=COMPRESSABLE,
            response_parameters=[messages_pb2.ResponseParameters(size=n) for n in RESPONSE_SIZES],
        )
    )
    for size in RESPONSE_SIZES:
        check_payload(await call.read(), size)
    assert await call.read() is grpc.aio.EOF  # exactly four responses, then OK
    assert await call.code() is OK


async def aio_ping_pong(stubs: Stubs) -> None:
    call = stubs.test.FullDuplexCall()
    for response_size, payload_size in zip(RESPONSE_SIZES, PAYLOAD_SIZES, strict=True):
        await call.write(duplex_request(response_size, payload_size))
        check_payload(await call.read(), response_size)
    await call.done_writing()
    assert await call.read() is grpc.aio.EOF
    assert await call.code() is OK and await call.details() == ""


async def aio_empty_stream(stubs: Stubs) -> None:
    call = stubs.test.FullDuplexCall()
    await call.done_writing()
    assert await call.read() is grpc.aio.EOF


async def aio_cancel_after_begin(stubs: Stubs) -> None:
    call = stubs.test.StreamingInputCall()
    call.cancel()
    assert call.cancelled()
    assert await call.code() is CANCELLED


async def aio_cancel_after_first_response(stubs: Stubs) -> None:
    call = stubs.test.FullDuplexCall()
    await call.write(duplex_request(RESPONSE_SIZES[0], PAYLOAD_SIZES[0]))
    await call.read()
    call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await call.read()
    assert await call.code() is CANCELLED


async def aio_timeout_on_sleeping_server(stubs: Stubs) -> None:
    # As grpc's asyncio client: a 1 s deadline, a server asked to sleep 2 s first.
    call = stubs.test.FullDuplexCall(timeout=1.0)
    request = messages_pb2.StreamingOutputCallRequest(
        response_type=COMPRESSABLE,
        payload=payload(PAYLOAD_SIZES[0]),
        response_parameters=[messages_pb2.ResponseParameters(interval_us=2_000_000)],
    )
    await call.write(request)
    await call.done_writing()
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await call.read()
    assert raised.value.code() is DEADLINE_EXCEEDED


async def aio_status_code_and_message(stubs: Stubs) -> None:
    call = stubs.test.UnaryCall(status_request(STATUS_MESSAGE))
    assert await call.code() is UNKNOWN and await call.details() == STATUS_MESSAGE
    call = stubs.test.FullDuplexCall()
    await call.write(duplex_status_request())
    await call.done_writing()
    assert await call.code() is UNKNOWN and await call.details() == STATUS_MESSAGE


async def aio_special_status_message(stubs: Stubs) -> None:
    call = stubs.test.UnaryCall(status_request(SPECIAL_STATUS_MESSAGE))
    assert await call.code() is UNKNOWN and await call.details() == SPECIAL_STATUS_MESSAGE


async def aio_custom_metadata(stubs: Stubs) -> None:
    call = stubs.test.UnaryCall(large_request(), metadata=ECHO_METADATA)
    check_echoed(await call.initial_metadata(), await call.trailing_metadata())
    call = stubs.test.FullDuplexCall(metadata=ECHO_METADATA)
    await call.write(duplex_request(LARGE_RESPONSE, LARGE_PAYLOAD))
    await call.read()
    await call.done_writing()
    check_echoed(await call.initial_metadata(), await call.trailing_metadata())


async def aio_unimplemented_method(stubs: Stubs) -> None:
    assert await stubs.test.UnimplementedCall(empty_pb2.Empty()).code() is UNIMPLEMENTED


async def aio_unimplemented_service(stubs: Stubs) -> None:
    assert await stubs.unimplemented.UnimplementedCall(empty_pb2.Empty()).code() is UNIMPLEMENTED


AIO_CASES: dict[str, Callable[[Stubs], Awaitable[None]]] = {
    case.__name__.removeprefix("aio_"): case
    for case in (
        aio_empty_unary,
        aio_large_unary,
        aio_client_streaming,
        aio_server_streaming,
        aio_ping_pong,
        aio_empty_stream,
        aio_cancel_after_begin,
        aio_cancel_after_first_response,
        aio_timeout_on_sleeping_server,
        aio_status_code_and_message,
        aio_special_status_message,
        aio_custom_metadata,
        aio_unimplemented_method,
        aio_unimplemented_service,
    )
}


# --- the fleet and the tests ------------------------------------------------------------------


@pytest.fixture(scope="module")
def servers() -> Iterator[InteropServers]:
    """Three TestService servers for the whole module: they keep no state between calls."""
    with start_servers() as running:
        yield running


@pytest.fixture
def target(servers: InteropServers, dns_server: Any) -> str:
    """The servers behind one name in a real DNS server: grpclb resolves it as a Service."""
    dns_server.set_records(NAME, list(servers.hosts))
    return str(dns_server.target(NAME, servers.port))


def test_both_flavours_run_the_same_cases() -> None:
    assert list(AIO_CASES) == list(SYNC_CASES)


@pytest.mark.parametrize("case", SYNC_CASES)
def test_plain_grpcio_passes_interop_case(case: str, servers: InteropServers) -> None:
    """The sync control: the same case on grpcio's own channel to one server."""
    with grpc.insecure_channel(servers.addresses[0]) as channel:
        grpc.channel_ready_future(channel).result(timeout=CASE_TIMEOUT_S)
        SYNC_CASES[case](stubs(channel))


@pytest.mark.parametrize("case", AIO_CASES)
def test_plain_grpc_aio_passes_interop_case(case: str, servers: InteropServers) -> None:
    """The asyncio control: the same case on grpc.aio's own channel to one server."""

    async def run() -> None:
        async with grpc.aio.insecure_channel(servers.addresses[0]) as channel:
            await channel.channel_ready()
            await AIO_CASES[case](stubs(channel))

    drive(run(), CASE_TIMEOUT_S)


@pytest.mark.parametrize("case", SYNC_CASES)
def test_grpclb_channel_passes_interop_case(case: str, target: str) -> None:
    """The case through ``grpclb.channel``: resolved by DNS, picked among three pods."""
    with grpclb.channel(target) as channel:
        wait_ready(channel, PODS, CASE_TIMEOUT_S)
        SYNC_CASES[case](stubs(channel))


@pytest.mark.parametrize("case", AIO_CASES)
def test_grpclb_aio_channel_passes_interop_case(case: str, target: str) -> None:
    """The case through ``grpclb.aio.channel``, created and closed in the case's own loop."""

    async def run() -> None:
        channel = grpclb.aio.channel(target)
        try:
            await ready(channel, PODS, CASE_TIMEOUT_S)
            await AIO_CASES[case](stubs(channel))
        finally:
            await channel.close()

    drive(run(), CASE_TIMEOUT_S)
