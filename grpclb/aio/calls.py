"""The asyncio call path: grpc.aio calls that choose a pod per call.

A grpc.aio call object is returned before its outcome is known, and may be
returned before any pod is known (before the first DNS answer, or while
``wait_for_ready`` waits), so every call is a small stand-in that starts its
attempt on a pod at once when it can, later when it must, and, for
unary-request calls, moves a failed attempt to another pod. The decisions
(who may wait, what is retried, the budget) are the core's, as in the sync
path.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable, Generator
from typing import TYPE_CHECKING, Any

import grpc
import grpc.aio

from grpclb._grpcio import aio_finished_status
from grpclb.core.admission import Metadata
from grpclb.core.endpoints import Connection, Endpoint
from grpclb.errors import LocalRpcError

if TYPE_CHECKING:
    from grpclb.aio.channel import Channel

log = logging.getLogger("grpclb")


def as_aio_error(error: LocalRpcError) -> grpc.aio.AioRpcError:
    """A failure before any pod, in the type grpc.aio callers catch."""
    return grpc.aio.AioRpcError(
        error.code(), grpc.aio.Metadata(), grpc.aio.Metadata(), details=error.details()
    )


finished_status = aio_finished_status


class _Release:
    """Done-callback of one attempt: release its count once, then tell its call; never raises.

    One callback per attempt, not two: this runs for every call on the event loop.
    """

    __slots__ = ("channel", "connection", "method", "owner", "retry", "started")

    def __init__(
        self, owner: _Call, connection: Connection, retry: bool, method: str, started: float
    ) -> None:
        self.owner, self.channel, self.connection = owner, owner._channel, connection
        self.retry, self.method, self.started = retry, method, started

    def __call__(self, call: Any) -> None:
        try:
            code = finished_status(call)
            if code is None and not call.cancelled():
                # Interceptors hide grpcio's call; ask it the slow way.
                self.channel._spawn(self._later(call))
            else:
                self._finish(code)
            self.owner._attempt_done(call)
        except Exception:  # pragma: no cover - defensive
            log.exception("grpclb: releasing a call failed")

    async def _later(self, call: Any) -> None:
        try:
            code = await call.code()
        except BaseException:
            code = None
        self._finish(code)

    def _finish(self, code: grpc.StatusCode | None) -> None:
        self.channel._balancer.finish_call(
            self.connection, code, retry=self.retry, method=self.method, started=self.started
        )


class _MultiCallable:
    _kind = ""  # the grpc.aio.Channel factory a pod's multicallable comes from

    def __init__(
        self,
        channel: Channel,
        method: str,
        serializer: Any,
        deserializer: Any,
        registered: bool,
    ) -> None:
        self._channel = channel
        self._key = (self._kind, method, serializer, deserializer, registered)

    def _on(self, connection: Connection) -> Any:
        found = connection.multicallables.get(self._key)
        if found is None:  # one event loop thread: no lock needed
            kind, method, serializer, deserializer, registered = self._key
            found = getattr(connection.channel, kind)(
                method, serializer, deserializer, _registered_method=registered
            )
            connection.multicallables[self._key] = found
        return found


class UnaryUnary(_MultiCallable, grpc.aio.UnaryUnaryMultiCallable):  # type: ignore[misc]
    _kind = "unary_unary"

    def __call__(self, request: Any, **kwargs: Any) -> UnaryUnaryCall:
        return UnaryUnaryCall(self, request, True, **kwargs)


class UnaryStream(_MultiCallable, grpc.aio.UnaryStreamMultiCallable):  # type: ignore[misc]
    _kind = "unary_stream"

    def __call__(self, request: Any, **kwargs: Any) -> UnaryStreamCall:
        return UnaryStreamCall(self, request, True, **kwargs)


class StreamUnary(_MultiCallable, grpc.aio.StreamUnaryMultiCallable):  # type: ignore[misc]
    _kind = "stream_unary"

    def __call__(self, request_iterator: Any = None, **kwargs: Any) -> StreamUnaryCall:
        return StreamUnaryCall(self, request_iterator, False, **kwargs)


class StreamStream(_MultiCallable, grpc.aio.StreamStreamMultiCallable):  # type: ignore[misc]
    _kind = "stream_stream"

    def __call__(self, request_iterator: Any = None, **kwargs: Any) -> StreamStreamCall:
        return StreamStreamCall(self, request_iterator, False, **kwargs)


class _Call:
    """One logical call: its attempts on pods, and grpc.aio's Call interface over them."""

    def __init__(
        self,
        owner: _MultiCallable,
        request: Any,
        replayable: bool,
        *,
        timeout: float | None = None,
        metadata: Metadata = None,
        credentials: grpc.CallCredentials | None = None,
        wait_for_ready: bool | None = None,
        compression: grpc.Compression | None = None,
    ) -> None:
        self._owner, self._channel = owner, owner._channel
        self._request = request
        self._metadata, self._wait_for_ready = metadata, wait_for_ready
        self._credentials, self._compression = credentials, compression
        self._deadline = None if timeout is None else time.monotonic() + timeout
        self._retries = self._channel.settings.retries if replayable else 0
        self._tried: list[Endpoint] = []
        self._attempt: Any = None
        self._connection: Connection | None = None
        self._error: grpc.aio.AioRpcError | None = None
        self._callbacks: list[Callable[[Any], None]] = []
        self._settled = False
        self._driven = False  # someone awaits or iterates, and so decides retries
        self._method = owner._key[1]
        self._born = time.perf_counter()  # gRFC A66: the call's duration starts here
        self._starter: asyncio.Task[None] | None = None
        try:
            connection = self._channel._start_now(metadata, self._method)
        except LocalRpcError as error:
            self._fail(as_aio_error(error))
            return
        if connection is not None:
            self._invoke(connection)
        else:
            # No pod yet: start as soon as there is one, awaited or not, as grpc.aio
            # starts every call when it is made.
            self._starter = self._channel._spawn(self._start_attempt())

    def _invoke(self, connection: Connection) -> None:
        remaining = None if self._deadline is None else max(self._deadline - time.monotonic(), 0)
        balancer = self._channel._balancer
        started = time.perf_counter() if balancer.telemetry.enabled else 0.0
        try:
            call = self._owner._on(connection)(
                self._request,
                timeout=remaining,
                metadata=self._metadata,
                credentials=self._credentials,
                wait_for_ready=self._wait_for_ready,
                compression=self._compression,
            )
        except BaseException:
            balancer.finish_call(connection, None, retry=bool(self._tried))
            raise
        call.add_done_callback(_Release(self, connection, bool(self._tried), self._method, started))
        self._attempt, self._connection = call, connection

    async def _start_attempt(self) -> None:
        """Wait for a pod and start an attempt there; a failure becomes the call's error."""
        try:
            connection = await self._channel._begin(
                self._metadata,
                self._deadline,
                bool(self._wait_for_ready),
                self._tried,
                self._method,
            )
        except LocalRpcError as error:
            self._fail(as_aio_error(error))
            return
        if self._error is None:  # not cancelled meanwhile
            self._invoke(connection)
        else:
            self._channel._balancer.finish_call(connection, None, retry=bool(self._tried))

    async def _started(self) -> Any:
        """The current attempt, after waiting for a pod if there was none."""
        if self._attempt is None and self._error is None:
            starter = self._starter
            if starter is not None and not starter.done():
                # Shared by every task using the call (a reader and a writer, say), so
                # the call starts once; cancel() cancels it, and so every waiter.
                await asyncio.shield(starter)
            else:
                await self._start_attempt()  # a retry, started by the call's one driver
        if self._attempt is None:
            assert self._error is not None
            if self._error.code() is grpc.StatusCode.CANCELLED:
                raise asyncio.CancelledError()  # as grpc.aio's cancelled calls do
            raise self._error
        return self._attempt

    async def _retry_after(self, error: grpc.aio.AioRpcError) -> bool:
        """Prepare the next attempt after a failure; False when the failure is final."""
        if len(self._tried) >= self._retries or self._connection is None:
            return False
        delay = self._channel._balancer.retry_delay(error.code(), len(self._tried), self._deadline)
        if delay is None:
            return False
        self._tried.append(self._connection.endpoint)
        self._attempt = None
        try:
            await asyncio.sleep(delay)
            if self._error is not None:  # cancelled during the backoff
                raise asyncio.CancelledError()
        except BaseException:
            self._channel._balancer.cancel_retry()  # the granted retry never starts
            raise
        return True

    def _fail(self, error: grpc.aio.AioRpcError) -> None:
        if self._settled:
            return  # the first outcome stands (a cancel is not overwritten by a deadline)
        self._error = error
        self._settle()

    def _attempt_done(self, call: Any) -> None:
        if not self._driven or call.cancelled():
            self._settle()  # nobody will retry it: this attempt is the call's outcome

    def _settle(self) -> None:
        if self._settled:
            return
        self._settled = True
        callbacks, self._callbacks = self._callbacks, []
        for callback in callbacks:
            try:
                callback(self)
            except Exception:
                log.exception("grpclb: a call's done-callback raised")

    # grpc.aio.RpcContext
    def cancel(self) -> bool:
        if self._attempt is not None:
            return bool(self._attempt.cancel())
        if self._settled:
            return False
        if self._starter is not None:
            self._starter.cancel()
        self._fail(
            grpc.aio.AioRpcError(
                grpc.StatusCode.CANCELLED,
                grpc.aio.Metadata(),
                grpc.aio.Metadata(),
                details="Locally cancelled by application!",
            )
        )
        return True

    def cancelled(self) -> bool:
        if self._attempt is not None:
            return bool(self._attempt.cancelled())
        return self._error is not None and self._error.code() is grpc.StatusCode.CANCELLED

    def done(self) -> bool:
        return self._settled or (
            self._attempt is not None and self._attempt.done() and not self._driven
        )

    def time_remaining(self) -> float | None:
        return None if self._deadline is None else max(self._deadline - time.monotonic(), 0.0)

    def add_done_callback(self, callback: Callable[[Any], None]) -> None:
        if self._settled:
            callback(self)
        else:
            self._callbacks.append(callback)

    # grpc.aio.Call
    async def _final(self) -> Any:
        """The attempt that decides the call's status (after it ended), or raise the local error."""
        return await self._started()

    async def initial_metadata(self) -> Any:
        return await (await self._final()).initial_metadata()

    async def trailing_metadata(self) -> Any:
        if self._error is not None:
            return self._error.trailing_metadata()
        return await (await self._final()).trailing_metadata()

    async def code(self) -> grpc.StatusCode:
        if self._error is not None:
            return self._error.code()
        await self._wait_settled()
        return self._error.code() if self._error is not None else await self._attempt.code()

    async def details(self) -> str:
        if self._error is not None:
            return str(self._error.details())
        await self._wait_settled()
        if self._error is not None:
            return str(self._error.details())
        return str(await self._attempt.details())

    async def wait_for_connection(self) -> None:
        await (await self._final()).wait_for_connection()

    async def _wait_settled(self) -> None:
        await (await self._final()).code()

    def __repr__(self) -> str:
        return f"<grpclb.aio call {self._owner._key[1]} attempt={self._attempt!r}>"


class _UnaryResponse(_Call):
    _outcome: tuple[Any, BaseException | None] | None = None
    _finished: asyncio.Event | None = None

    def __await__(self) -> Generator[Any, None, Any]:
        return self._response().__await__()

    async def _response(self) -> Any:
        if self._driven:  # another task drives this call: share its outcome
            if self._finished is None:
                self._finished = asyncio.Event()
            if self._outcome is None:
                await self._finished.wait()
        if self._outcome is not None:
            if self._outcome[1] is not None:
                raise self._outcome[1]
            return self._outcome[0]
        self._driven = True
        try:
            while True:
                attempt = self._attempt  # the common case: started when the call was made
                if attempt is None:
                    attempt = await self._started()
                try:
                    response = await attempt
                except grpc.aio.AioRpcError as error:
                    if await self._retry_after(error):
                        continue
                    self._outcome = (None, error)
                    raise
                self._outcome = (response, None)
                return response
        except BaseException as error:
            if self._outcome is None:
                self._outcome = (None, error)
            raise
        finally:
            self._channel._balancer.telemetry.call_ended(
                self._method, self._born, self._outcome and self._outcome[1]
            )
            self._settle()
            if self._finished is not None:
                self._finished.set()

    async def _wait_settled(self) -> None:
        with contextlib.suppress(grpc.RpcError, asyncio.CancelledError):
            await self


class UnaryUnaryCall(_UnaryResponse, grpc.aio.UnaryUnaryCall):  # type: ignore[misc]
    pass


class _Writes:
    async def write(self, request: Any) -> None:
        await (await self._started()).write(request)  # type: ignore[attr-defined]

    async def done_writing(self) -> None:
        await (await self._started()).done_writing()  # type: ignore[attr-defined]


class StreamUnaryCall(_Writes, _UnaryResponse, grpc.aio.StreamUnaryCall):  # type: ignore[misc]
    pass


class _StreamResponse(_Call):
    _reader: AsyncIterator[Any] | None = None

    def __aiter__(self) -> AsyncIterator[Any]:
        return self._messages()

    async def read(self) -> Any:
        if self._reader is None:
            self._reader = self._messages()
        try:
            return await self._reader.__anext__()
        except StopAsyncIteration:
            return grpc.aio.EOF

    async def _messages(self) -> AsyncIterator[Any]:
        self._driven = True
        received = False
        try:
            while True:
                attempt = await self._started()
                try:
                    async for message in attempt:
                        received = True
                        yield message
                    return
                except grpc.aio.AioRpcError as error:
                    # What was read cannot be replayed: retry only before the first message.
                    if received or not await self._retry_after(error):
                        raise
        finally:
            self._settle()


class UnaryStreamCall(_StreamResponse, grpc.aio.UnaryStreamCall):  # type: ignore[misc]
    pass


class StreamStreamCall(_Writes, _StreamResponse, grpc.aio.StreamStreamCall):  # type: ignore[misc]
    pass
