"""grpcio's private API that grpclb relies on (all of it is in grpclb._grpcio).

These fail loudly when a grpcio upgrade moves what grpclb reaches into, so the
change is noticed here rather than as a silent fallback in production.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import weakref

import grpc
import grpc.aio
import pytest
from grpc import _common as grpc_common

from grpclb import _grpcio


def test_status_code_table_covers_every_status() -> None:
    assert set(grpc_common.CYGRPC_STATUS_CODE_TO_STATUS_CODE.values()) == set(grpc.StatusCode)


def test_sync_channel_exposes_its_core_channel() -> None:
    channel = grpc.insecure_channel("ipv4:127.0.0.1:1")
    try:
        core = _grpcio.core_channel(channel)
        assert core is not None, "grpc.Channel no longer has _channel"
        assert hasattr(core, "check_connectivity_state")
        assert _grpcio.request_connection(channel) is True
    finally:
        channel.close()


def test_finished_aio_call_status_is_readable_without_awaiting() -> None:
    async def scenario() -> grpc.StatusCode | None:
        async with grpc.aio.insecure_channel("ipv4:127.0.0.1:1") as channel:
            call = channel.unary_unary("/x.Y/Z")(b"", timeout=0.01)
            with contextlib.suppress(grpc.aio.AioRpcError):
                await call
            assert call._cython_call is not None, "grpc.aio call no longer has _cython_call"
            return _grpcio.aio_finished_status(call)

    status = asyncio.run(scenario())
    assert status in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)


def test_a_unary_calls_end_reaches_a_callback_of_no_arguments_then_lets_it_go() -> None:
    """``when_unary_call_ends`` registers on the Cython call, which must call the callback
    once, with no arguments, and drop it when the call ends (the callback may hold the call)."""

    class Ended:
        def __init__(self) -> None:
            self.calls = 0

        def __call__(self) -> None:
            self.calls += 1

    async def scenario() -> None:
        async with grpc.aio.insecure_channel("ipv4:127.0.0.1:1") as channel:
            call = channel.unary_unary("/x.Y/Z")(b"", timeout=0.05)
            assert callable(call._cython_call.add_done_callback), "grpc.aio moved it"
            ended = Ended()
            watcher = weakref.ref(ended)
            _grpcio.when_unary_call_ends(call, ended)
            del ended
            with contextlib.suppress(grpc.aio.AioRpcError):
                await call
            await asyncio.sleep(0)
            assert watcher() is None, "the Cython call kept its callback after the call ended"
            late = Ended()
            _grpcio.when_unary_call_ends(call, late)  # registered after the end: runs at once
            assert late.calls == 1

    asyncio.run(scenario())


def test_a_call_that_hides_grpcios_call_still_reports_its_end() -> None:
    seen: list[object] = []

    class Wrapped:  # what an interceptor's call looks like: the public API only
        def add_done_callback(self, callback: object) -> None:
            seen.append(callback)

    ends: list[int] = []
    _grpcio.when_unary_call_ends(Wrapped(), lambda: ends.append(1))
    assert len(seen) == 1
    seen[0](Wrapped())  # type: ignore[operator]
    assert ends == [1]


def test_aio_request_stream_writer_reaches_what_it_writes_with() -> None:
    """``send_request_stream`` writes through the Cython call, past grpc.aio's writer."""
    from grpc._cython import cygrpc

    async def scenario() -> None:
        async with grpc.aio.insecure_channel("ipv4:127.0.0.1:1") as channel:
            call = channel.stream_stream("/x.Y/Z")(timeout=0.5)
            assert isinstance(call._metadata_sent, asyncio.Event)
            assert call._request_serializer is None
            assert call._done_writing_flag is False
            assert _grpcio.done_writing(call) is False
            assert callable(call._cython_call.send_serialized_message)
            assert callable(call._cython_call.send_receive_close)
            await _grpcio.send_request_stream(call, iter([b"a", b"b"]))  # never raises
            assert call.done()  # nobody listens at port 1: the call ended, writes stopped
            assert await call.code() in (
                grpc.StatusCode.UNAVAILABLE,
                grpc.StatusCode.DEADLINE_EXCEEDED,
            )

    assert issubclass(cygrpc.InternalError, Exception)
    asyncio.run(scenario())


def test_a_finished_sync_calls_response_headers_are_readable_without_waiting() -> None:
    channel = grpc.insecure_channel("ipv4:127.0.0.1:1")
    try:
        future = channel.unary_unary("/x.Y/Z").future(b"", timeout=0.5)
        assert future.exception(timeout=5) is not None
        assert hasattr(future._state, "initial_metadata"), "grpcio moved a call's headers"
        assert not _grpcio.sync_response_headers(future)  # nothing received: None
        with pytest.raises(grpc.RpcError) as raised:
            channel.unary_unary("/x.Y/Z")(b"", timeout=0.5)
        assert not _grpcio.sync_response_headers(raised.value)
    finally:
        channel.close()


def test_sync_channel_state_is_readable_without_a_thread_and_refused_once_closed() -> None:
    channel = grpc.insecure_channel("ipv4:127.0.0.1:1")
    read = _grpcio.connectivity_reader(channel)
    assert read is not None, "grpc.Channel._channel lost check_connectivity_state"
    threads = threading.active_count()
    try:
        assert read() is grpc.ChannelConnectivity.IDLE  # reading does not ask to connect
        assert threading.active_count() == threads, "reading a state started a thread"
    finally:
        channel.close()
    # The connectivity monitor drops a watch whose channel was closed under it.
    with pytest.raises(ValueError):
        read()
