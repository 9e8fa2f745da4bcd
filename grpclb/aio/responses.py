"""The asyncio call kinds: the drivers that await a logical call's attempts.

A unary-response call is driven by the task that awaits it: it retries after
a failure, or hedges, as the call's policy decides (``core.retry``). A
response stream is driven by its reader and retried only before its first
message. A call nobody drives yet is retried in the background
(``_Call._attempt_done``). Request streams are kept for retries
(``grpclb.aio.requests``). Every await on an attempt cancels the attempt if the awaiting task
is cancelled (``_Call._on_attempt``).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable, Generator
from typing import Any

import grpc
import grpc.aio

from grpclb._grpcio import aio_finished_status
from grpclb.aio.calls import _CANCELLED, _OK, _Call
from grpclb.aio.errors import raisable
from grpclb.aio.requests import _Writes
from grpclb.core.attempt import Attempt


def _constant(value: Any) -> Callable[[], Any]:
    return lambda: value


_NO_ANSWER: Any = object()  # a unary-response call's answer before it has one


class _UnaryResponse(_Call):
    # The outcome, as two attributes rather than a tuple: no object made per call.
    _response: Any = _NO_ANSWER
    _failure: BaseException | None = None
    _finished: asyncio.Event | None = None
    _attempts_timed = True

    def __await__(self) -> Generator[Any, None, Any]:
        # A generator, not a coroutine: no coroutine and wrapper per call, one frame less.
        if self._driven:  # another task drives this call: share its outcome
            if self._finished is None:
                self._finished = asyncio.Event()
            if self._response is _NO_ANSWER and self._failure is None:
                yield from self._finished.wait().__await__()
        if self._failure is not None:
            raise raisable(self._failure)
        if self._response is not _NO_ANSWER:
            return self._response
        if self._settled and self._attempt is not None:
            # It ended before anyone awaited: its outcome stands.
            return (yield from self._attempt.__await__())
        self._driven = True
        code = None
        try:
            if self._policy.hedging_delay is not None:  # (not the property: per call)
                try:
                    response = yield from self._hedged().__await__()
                except grpc.aio.AioRpcError:
                    raise  # the call's own outcome
                except BaseException:  # the task cancelled, or the coroutine closed
                    self.cancel()  # the awaiting task went away: so does the call
                    raise
            else:  # retries, inline: one coroutine less on every call
                while True:
                    attempt = self._attempt  # the common case: started when the call was made
                    if attempt is None:
                        try:
                            attempt = yield from self._started().__await__()
                        except BaseException:  # the task cancelled, or the coroutine closed
                            self.cancel()  # the awaiting task went away: so does the call
                            raise
                    handle = self._handle
                    self._awaiting = attempt  # its done-callback leaves the release to us
                    try:
                        response = yield from attempt.__await__()
                    except grpc.aio.AioRpcError as error:
                        self._awaiting = None
                        if handle is not None:
                            handle.release(aio_finished_status(attempt))
                        if self._retry_after(error):
                            continue
                        if self.cancelled():
                            raise asyncio.CancelledError() from None  # as grpc.aio's
                        raise
                    except BaseException:  # the task cancelled, or the coroutine closed
                        self._awaiting = None
                        self.cancel()  # the awaiting task went away: so does the RPC
                        if handle is not None and attempt.done():
                            handle.release(aio_finished_status(attempt))  # else: its callback
                        raise
                    self._awaiting = None
                    if handle is not None:
                        handle.balancer.release(handle, _OK)  # (its release(), one frame less)
                    break
            self._response = response
            code = _OK
            return response
        except BaseException as error:
            if self._response is _NO_ANSWER and self._failure is None:
                if isinstance(error, GeneratorExit):  # closed mid-await: the call was cancelled
                    error = asyncio.CancelledError()
                self._failure = raisable(error)  # not the one raised now
            code = error.code() if isinstance(error, grpc.aio.AioRpcError) else _CANCELLED
            raise
        finally:
            self._settle(code)
            if self._finished is not None:
                self._finished.set()

    async def _hedged(self) -> Any:
        """A6 hedging: attempts on distinct pods, the first final answer wins."""
        run, clock = self._progress(), self._loop.time
        hedging_delay = run.policy.hedging_delay or 0.0
        # Set by a hedge's end, by cancel(), and by the channel's close().
        changed = self._hedger = asyncio.Event()
        self._channel._backoffs.add(changed)
        running: dict[Any, Attempt] = {}
        self._hedges = running  # so that cancel() reaches every hedge still running

        def ended_between_hedges() -> bool:
            """Cancelled, or the channel closed with no hedge running: as grpc.aio's."""
            return self._settled or (not running and self._channel._balancer.closed)

        def track(call: Any) -> None:
            assert self._handle is not None
            running[call] = self._handle
            call.add_done_callback(lambda _: changed.set())

        track(await self._started())
        next_hedge = clock() + hedging_delay
        last: Any = None
        at_deadline = False  # the call's deadline ended it: the hedges running end at it too
        try:
            while True:
                if ended_between_hedges():
                    raise asyncio.CancelledError()
                if run.may_hedge(time.monotonic()) and clock() >= next_hedge:
                    attempt = self._channel._pick_hedge(
                        self._digest, self._owner._method, run, self._wait_for_ready
                    )
                    if attempt is None:
                        run.attempts = run.policy.max_attempts  # no budget or no pod: stop
                    else:
                        track(self._invoke(attempt))
                        next_hedge = clock() + hedging_delay
                if not running and not run.may_hedge(time.monotonic()):
                    self._attempt = last
                    return await last  # no hedge left, or none in time: the last failure stands
                hedging = run.may_hedge(time.monotonic())
                timeout = max(next_hedge - clock(), 0.0) if hedging else None
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(changed.wait(), timeout)
                changed.clear()
                if ended_between_hedges():
                    raise asyncio.CancelledError()
                ended = [c for c in running if c.done()]
                ended.sort(key=lambda c: aio_finished_status(c) is not _OK)  # an answer first
                for call in ended:
                    handle = running.pop(call)
                    code = aio_finished_status(call) or await call.code()
                    if code is _OK:
                        handle.release(_OK)
                        self._attempt, self._handle = call, handle
                        return await call
                    trailing = await call.trailing_metadata()
                    final, delay = run.hedge_failed(code, _constant(trailing), time.monotonic())
                    last = self._attempt = call
                    if final:
                        at_deadline = run.ended_by_deadline(code, time.monotonic())
                        return await call  # raises its error
                    if delay is not None:
                        next_hedge = clock() + delay  # A6: at once, or after the pushback
        finally:
            if not at_deadline:
                for call in running:
                    call.cancel()  # the losers: a cancel is no verdict on their pods
            running.clear()  # (a cancel() of the ended call reaches none of them)

    async def _wait_settled(self) -> None:
        with contextlib.suppress(grpc.RpcError, asyncio.CancelledError):
            await self


class UnaryUnaryCall(_UnaryResponse, grpc.aio.UnaryUnaryCall):  # type: ignore[misc]
    pass


class StreamUnaryCall(_Writes, _UnaryResponse, grpc.aio.StreamUnaryCall):  # type: ignore[misc]
    pass


class _StreamResponse(_Call):
    _reader: AsyncIterator[Any] | None = None
    _ended_with: BaseException | None = None  # what ended read(): raised again, as grpc.aio does

    def __aiter__(self) -> AsyncIterator[Any]:
        return self._messages()

    async def read(self) -> Any:
        if self._ended_with is not None:
            raise raisable(self._ended_with)
        if self._reader is None:
            self._reader = self._messages()
        try:
            return await self._reader.__anext__()
        except StopAsyncIteration:
            return grpc.aio.EOF
        except (grpc.aio.AioRpcError, asyncio.CancelledError) as error:
            self._ended_with = raisable(error)  # (a new one: the raised one holds our frames)
            raise

    async def _messages(self) -> AsyncIterator[Any]:
        if self._settled and self._attempt is not None:
            async for message in self._attempt:  # it ended before anyone read: it stands
                yield message
            return
        self._driven = True
        received = False
        code = None
        try:
            while True:
                attempt = await self._started()
                try:
                    async for message in attempt:
                        if not received:
                            received = True  # A6: a message commits the call
                            if self._requests is not None:
                                self._requests.commit()  # its requests need not be kept
                        yield message
                    code = _OK
                    return
                except grpc.aio.AioRpcError as error:
                    # What was read cannot be replayed: retry only before the first message.
                    if received or not self._retry_after(error):
                        if self.cancelled():
                            raise asyncio.CancelledError() from None  # as grpc.aio's
                        code = error.code()
                        raise
        except (asyncio.CancelledError, GeneratorExit):
            self.cancel()  # the reader went away: so does the RPC
            code = _CANCELLED
            raise
        finally:
            self._settle(code)


class UnaryStreamCall(_StreamResponse, grpc.aio.UnaryStreamCall):  # type: ignore[misc]
    pass


class StreamStreamCall(_Writes, _StreamResponse, grpc.aio.StreamStreamCall):  # type: ignore[misc]
    pass
