"""The request side of asyncio stream-request calls: kept for retries, written by grpclb.

A client-streaming or bidirectional call whose policy may retry it keeps its
requests (``core.request_buffer``) and opens each attempt without them:

- a request iterator (sync or async) is read through a ``RequestBuffer``
  view by a writer task (``grpclb._grpcio.send_request_stream``): what
  earlier attempts sent, then the rest;
- messages given to ``write()`` are kept (``_Written``) and sent straight to
  the current attempt, as grpc.aio's ``write()`` sends them; a retry's
  attempt first gets them all again from a replay task, and writes made
  meanwhile wait for it.

Either way grpclb sends them, not grpc.aio's writer, which reports a write
racing the pod's answer as INTERNAL in place of the pod's status. A call its
policy will not retry is left to grpc.aio, as without grpclb.
"""

from __future__ import annotations

import asyncio
import functools
import weakref
from collections.abc import AsyncIterable
from typing import Any

import grpc
import grpc.aio

from grpclb._grpcio import (
    done_writing,
    half_close,
    headers_sent_or_ended,
    send_message,
    send_request_stream,
)
from grpclb.aio.calls import _REMAINING, _Call
from grpclb.core.attempt import Attempt
from grpclb.core.request_buffer import AsyncRequestBuffer, KeptRequests, RequestBuffer

# grpc.aio's own words for these:
_API_STYLE_ERROR = "The iterator and read/write APIs may not be mixed on a single RPC."
_RPC_ALREADY_FINISHED = "RPC already finished."
_RPC_HALF_CLOSED = 'RPC is half closed after calling "done_writing".'
_WRITERS: set[asyncio.Task[None]] = set()  # request writers, referenced until they end


def _stop_writers(call: _Writes) -> None:
    """The call ended: no attempt follows, so no writer need wait in the caller's iterator.

    As grpc.aio's cancel() cancels its own writer, which the caller's iterator
    sees as a CancelledError; what was kept for retries is let go.
    """
    for writer in call._writers or ():
        if not writer.done():
            writer.cancel()
    if call._requests is not None:
        call._requests.commit()


def _stop_writing(writer: asyncio.Task[None], call: Any) -> None:
    # A cancelled attempt (the logical call was cancelled) stops its writer, as grpc.aio
    # stops its own. An attempt that failed is not cancelled: its writer may be inside
    # the caller's iterator, which the next attempt reads on (a cancel would end it).
    if call.cancelled():
        writer.cancel()


class _Written:
    """The messages given to ``write()``, kept for retries, and how far they reached.

    ``sent`` counts the messages the current attempt has been sent; a write
    waiting for a retry's replay (``wait_sent``) is told when its message is
    sent, or, at the call's end (``end``), that it never was.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, kept: KeptRequests) -> None:
        self.loop = loop
        self.kept = kept
        self.sent = 0
        self.closed = False  # done_writing() was called
        self.replay: asyncio.Task[None] | None = None  # owns the attempt until caught up
        self.waiting: dict[int, asyncio.Future[bool]] = {}
        self.ended = False

    @property
    def committed(self) -> bool:
        return self.kept.committed

    def commit(self) -> None:
        self.kept.commit()
        if self.replay is None:
            self.kept.let_go()  # none will be replayed

    def wait_sent(self, index: int) -> asyncio.Future[bool]:
        sent = self.loop.create_future()
        if self.ended:
            sent.set_result(False)
        elif self.sent > index:
            sent.set_result(True)
        else:
            self.waiting[index] = sent
        return sent

    def mark_sent(self, index: int) -> None:
        self.sent = index + 1
        waiting = self.waiting.pop(index, None)
        if waiting is not None and not waiting.done():
            waiting.set_result(True)

    def end(self, _call: Any = None) -> None:
        self.commit()
        self.ended = True
        if self.replay is not None and not self.replay.done():
            self.replay.cancel()  # the call ended: no attempt needs what it was sending
        waiting, self.waiting = self.waiting, {}
        for sent in waiting.values():
            if not sent.done():
                sent.set_result(False)

    async def replay_to(self, attempt: weakref.ref[Any]) -> None:
        """Send a new attempt every message written so far, then hand it to the writes."""
        messages, index = self.kept.messages, 0
        try:
            while index < len(messages):  # (it grows while this runs: writes wait for it)
                if not await send_message(attempt, messages[index]):
                    return  # that attempt ended too: the next one's replay sends them
                self.mark_sent(index)
                index += 1
        finally:
            if self.replay is asyncio.current_task():
                self.replay = None  # caught up (or ended): writes go straight to the attempt
        if self.closed:
            await half_close(attempt)


class _Writes(_Call):
    """A stream-request call: its requests kept for retries, an iterator or writes."""

    _written: _Written | None = None  # write() and done_writing(), when kept for retries
    _writers: list[asyncio.Task[None]] | None = None  # grpclb's writers of an iterator

    def __init__(self, owner: Any, request: Any = None, **kwargs: Any) -> None:
        if owner.policy.max_attempts > 1:
            limit = owner._channel._settings.retry_buffer_bytes
            serializer = owner._key[2]  # (kind, method, request_serializer, ...)
            if request is None:
                kept = KeptRequests(limit, serializer)
                written = _Written(owner._channel._ensure_started(), kept)
                self._written = self._requests = written
            elif isinstance(request, AsyncIterable):
                self._requests = AsyncRequestBuffer(request, limit, serializer)
            else:
                self._requests = RequestBuffer(request, limit, serializer)
        super().__init__(owner, request, **kwargs)
        if self._written is not None:
            self.add_done_callback(self._written.end)  # writes still waiting were never sent
        elif isinstance(self._requests, (RequestBuffer, AsyncRequestBuffer)):
            self.add_done_callback(_stop_writers)

    def _invoke(self, attempt: Attempt, timeout: Any = _REMAINING) -> Any:
        requests = self._requests
        written = self._written
        if written is not None:
            # Opened for writes; what was written before it is replayed to it first.
            call = super()._invoke(attempt, timeout)
            call.add_done_callback(headers_sent_or_ended)
            written.sent = 0
            if written.kept.read or written.closed:
                replay = self._loop.create_task(written.replay_to(weakref.ref(call)))
                written.replay = replay
                _WRITERS.add(replay)
                replay.add_done_callback(_WRITERS.discard)
            return call
        if not isinstance(requests, (RequestBuffer, AsyncRequestBuffer)):
            # One attempt: grpc.aio writes, as without grpclb.
            return super()._invoke(attempt, timeout)
        # Opened without its requests: grpclb's writer sends them (what earlier attempts
        # sent, then the rest).
        self._request = None
        call = super()._invoke(attempt, timeout)
        call.add_done_callback(headers_sent_or_ended)
        writer = self._loop.create_task(send_request_stream(call, requests.attempt()))
        _WRITERS.add(writer)
        writer.add_done_callback(_WRITERS.discard)
        call.add_done_callback(functools.partial(_stop_writing, writer))
        if self._writers is None:
            self._writers = []
        self._writers = [w for w in self._writers if not w.done()] + [writer]
        return call

    @property
    def _done_writing_flag(self) -> bool:
        """Whether the request stream was half-closed (grpc.aio's intercepted write() asks)."""
        written, requests, attempt = self._written, self._requests, self._attempt
        if written is not None:
            return written.closed
        if isinstance(requests, (RequestBuffer, AsyncRequestBuffer)):
            return bool(requests.ended)
        return attempt is not None and done_writing(attempt)

    def _writing(self) -> None:
        """grpclb writes a kept iterator itself, on an attempt opened for writes: refuse
        ``write()`` there as grpc.aio refuses it on a call given an iterator. (A call that
        keeps nothing makes one attempt: its writes go to grpc.aio as they are.)"""
        if isinstance(self._requests, (RequestBuffer, AsyncRequestBuffer)):
            raise grpc.aio.UsageError(_API_STYLE_ERROR)

    async def write(self, request: Any) -> None:
        written = self._written
        if written is None:
            self._writing()
            await self._on_attempt((await self._started()).write(request))
            return
        if self._settled:
            await self._started()  # a failure before any pod (or a cancel) raises here
            raise asyncio.InvalidStateError(_RPC_ALREADY_FINISHED)  # as grpc.aio's write()
        if written.closed:
            raise asyncio.InvalidStateError(_RPC_HALF_CLOSED)
        kept = written.kept
        index, keeps = kept.read, not kept.committed  # (the one crossing the limit is kept)
        kept.keep(request, kept.live)
        try:
            attempt = self._attempt
            if (  # the usual write: at once, to the attempt
                written.replay is None
                and attempt is not None
                and await send_message(weakref.ref(attempt), request)
            ):
                if self._attempt is attempt:
                    written.mark_sent(index)
                return
            delivered = await self._deliver(written, index, keeps, request)
        except asyncio.CancelledError:
            self.cancel()  # the writing task was cancelled: so is the RPC, as in grpc.aio
            raise
        if not delivered:
            await self._raise_ended()  # the call ended before the message was sent

    async def _deliver(self, written: _Written, index: int, kept: bool, request: Any) -> bool:
        """Send message ``index`` to the current attempt, or have a retry's replay send it."""
        while True:
            replay = written.replay
            if replay is not None:
                if kept:
                    return await written.wait_sent(index)  # the replay sends it in turn
                await asyncio.wait((replay,))  # (not kept: the call is committed) then sent
                continue
            attempt = self._attempt
            if attempt is None:  # no pod yet, or a retry starting: its replay sends it
                if not kept:
                    await self._started()
                    continue
                return await written.wait_sent(index)
            if await send_message(weakref.ref(attempt), request):
                if self._attempt is attempt:
                    written.mark_sent(index)
                return True
            if not kept:
                return False  # that attempt ended, and nothing follows a committed call
            return await written.wait_sent(index)  # a retry's replay sends it, or the end

    async def _raise_ended(self) -> None:
        """What grpc.aio's pending write() raises when its call ends: the call's failure."""
        attempt = await self._started()  # a failure before any pod (or a cancel) raises here
        if attempt.cancelled():
            raise asyncio.CancelledError()  # as grpc.aio's write() on a call cancelled under it
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
        written = self._written
        if written is None:
            self._writing()
            await self._on_attempt((await self._started()).done_writing())
            return
        if written.closed or self._settled:
            return  # idempotent; nothing to do once the call ended (as grpc.aio)
        written.closed = True
        attempt = self._attempt
        if written.replay is None and attempt is not None:
            await half_close(weakref.ref(attempt))  # else the replay half-closes when done
