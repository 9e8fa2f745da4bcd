"""The request side of asyncio stream-request calls: kept for retries, written by grpclb.

A client-streaming or bidirectional call whose policy may retry it keeps its
requests (``core.request_buffer``): a request iterator (sync or async), or
the messages given to ``write()``, which feed an async iterator of their own
(``_WriteFeed``). Each attempt is opened without its requests and a writer
task sends them (``grpclb._grpcio.send_request_stream``): what earlier
attempts sent, then the rest. A call its policy will not retry is left to
grpc.aio's own writer, as without grpclb.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import AsyncIterable
from typing import Any

import grpc
import grpc.aio

from grpclb._grpcio import send_request_stream
from grpclb.aio.calls import _Call
from grpclb.core.attempt import Attempt
from grpclb.core.request_buffer import AsyncRequestBuffer, RequestBuffer


class _WritesSent:
    """A request stream sent with ``write()``: nothing is kept to send it again."""

    committed = True


_WRITES_SENT = _WritesSent()
# grpc.aio's own words for these:
_API_STYLE_ERROR = "The iterator and read/write APIs may not be mixed on a single RPC."
_RPC_ALREADY_FINISHED = "RPC already finished."
_RPC_HALF_CLOSED = 'RPC is half closed after calling "done_writing".'
_WRITERS: set[asyncio.Task[None]] = set()  # request writers, referenced until they end
_HALF_CLOSE = object()


def _stop_writing(writer: asyncio.Task[None], call: Any) -> None:
    # A cancelled attempt (the logical call was cancelled) stops its writer, as grpc.aio
    # stops its own. An attempt that failed is not cancelled: its writer may be inside
    # the caller's iterator, which the next attempt reads on (a cancel would end it).
    if call.cancelled():
        writer.cancel()


class _WriteFeed:
    """``write()`` and ``done_writing()`` as the async iterator a request buffer reads.

    A write waits until its message was sent to a pod, as grpc.aio's does (so a
    task cancelled there cancels the RPC): ``sent(i)`` comes from the writer
    of whichever attempt sends message ``i`` first.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._queue: asyncio.Queue[Any] = asyncio.Queue()
        self._waiting: dict[int, asyncio.Future[None]] = {}
        self._written = 0
        self.closed = False  # done_writing() was called

    def add(self, message: Any) -> asyncio.Future[None]:
        """Queue ``message``; the future is done once it was sent."""
        sent = self._loop.create_future()
        self._waiting[self._written] = sent
        self._written += 1
        self._queue.put_nowait(message)
        return sent

    def close(self) -> None:
        self.closed = True
        self._queue.put_nowait(_HALF_CLOSE)

    def sent(self, index: int) -> None:
        waiting = self._waiting.pop(index, None)
        if waiting is not None and not waiting.done():
            waiting.set_result(None)

    def __aiter__(self) -> _WriteFeed:
        return self

    async def __anext__(self) -> Any:
        message = await self._queue.get()
        if message is _HALF_CLOSE:
            raise StopAsyncIteration
        return message


class _Writes(_Call):
    """A request stream kept for retries (``core.request_buffer``): an iterator, or writes."""

    _feed: _WriteFeed | None = None  # write() and done_writing(), when kept for retries
    _ended: asyncio.Future[None] | None = None  # set when the call settles, for blocked writes

    def __init__(self, owner: Any, request: Any = None, **kwargs: Any) -> None:
        if owner.policy.max_attempts > 1:
            limit = owner._channel._settings.retry_buffer_bytes
            serializer = owner._key[3]
            if request is None:
                self._feed = _WriteFeed(owner._channel._ensure_started())
                self._requests = AsyncRequestBuffer(self._feed, limit, serializer)
            elif isinstance(request, AsyncIterable):
                self._requests = AsyncRequestBuffer(request, limit, serializer)
            else:
                self._requests = RequestBuffer(request, limit, serializer)
        super().__init__(owner, request, **kwargs)

    def _invoke(self, attempt: Attempt) -> Any:
        requests = self._requests
        if not isinstance(requests, (RequestBuffer, AsyncRequestBuffer)):
            return super()._invoke(attempt)  # one attempt: grpc.aio writes, as without grpclb
        # Opened without its requests: grpclb writes them (what earlier attempts sent,
        # then the rest), so that a write racing the pod's answer cannot replace the
        # pod's status with grpc.aio's INTERNAL (``send_request_stream``).
        self._request = None
        call = super()._invoke(attempt)
        sent = None if self._feed is None else self._feed.sent
        writer = self._loop.create_task(send_request_stream(call, requests.attempt(), sent))
        _WRITERS.add(writer)
        writer.add_done_callback(_WRITERS.discard)
        call.add_done_callback(functools.partial(_stop_writing, writer))
        return call

    def _writing(self) -> None:
        """Written messages commit a call that does not keep them (one attempt)."""
        if isinstance(self._requests, (RequestBuffer, AsyncRequestBuffer)):
            # grpclb writes the iterator itself, on an attempt opened for writes:
            # refuse as grpc.aio refuses it on a call given an iterator.
            raise grpc.aio.UsageError(_API_STYLE_ERROR)
        if self._requests is None:
            self._requests = _WRITES_SENT
            if self._run is not None:
                self._run.requests = _WRITES_SENT

    async def write(self, request: Any) -> None:
        feed = self._feed
        if feed is None:
            self._writing()
            await self._on_attempt((await self._started()).write(request))
            return
        if self._settled:
            await self._started()  # a failure before any pod (or a cancel) raises here
            raise asyncio.InvalidStateError(_RPC_ALREADY_FINISHED)  # as grpc.aio's write()
        if feed.closed:
            raise asyncio.InvalidStateError(_RPC_HALF_CLOSED)
        sent = feed.add(request)
        ended = self._ended
        if ended is None:
            ended = self._ended = self._loop.create_future()
            self.add_done_callback(functools.partial(_set_done, ended))
        try:
            await asyncio.wait((sent, ended), return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            self.cancel()  # the writing task was cancelled: so is the RPC, as in grpc.aio
            raise
        if not sent.done():
            await self._raise_ended()  # the call ended before the message was sent

    async def _raise_ended(self) -> None:
        """What grpc.aio's pending write() raises when its call ends: the call's failure."""
        attempt = await self._started()  # a failure before any pod (or a cancel) raises here
        code = await attempt.code()
        if code is not grpc.StatusCode.OK and not attempt.cancelled():
            raise grpc.aio.AioRpcError(
                code,
                await attempt.initial_metadata(),
                await attempt.trailing_metadata(),
                await attempt.details(),
            )
        raise asyncio.InvalidStateError(_RPC_ALREADY_FINISHED)

    async def done_writing(self) -> None:
        feed = self._feed
        if feed is None:
            self._writing()
            await self._on_attempt((await self._started()).done_writing())
            return
        if not feed.closed and not self._settled:  # idempotent; nothing to do once ended
            feed.close()


def _set_done(future: asyncio.Future[None], _call: Any) -> None:
    if not future.done():
        future.set_result(None)
