"""Retries for the non-blocking call styles: futures and response streams.

A blocking call retries in a loop (see ``calls``). A future or a stream has
returned to the caller before its outcome is known, so each needs a stand-in
that looks like grpcio's object and starts the next attempt on another pod:

- a future: when an attempt fails with a retryable code, the next one starts
  after the backoff (on a timer thread, never inside grpcio's callback);
- a response stream: only before its first message, since what was already
  read cannot be replayed; the retry happens in the reader's ``next()``.

Each attempt releases its own in-flight count through its own done-callback.
"""

from __future__ import annotations

import contextvars
import logging
import threading
import weakref
from collections.abc import Callable, Sequence
from typing import Any

import grpc

from grpclb.core.endpoints import Connection, Endpoint
from grpclb.errors import LocalRpcError

log = logging.getLogger("grpclb")

# (endpoints tried so far) -> (the attempt's grpcio call, its connection)
StartAttempt = Callable[[Sequence[Endpoint]], tuple[Any, Connection]]
# (status code, retries done) -> seconds to wait before retrying, or None
RetryDelay = Callable[[grpc.StatusCode | None, int], float | None]


class RetryingFuture(grpc.Future, grpc.Call):  # type: ignore[misc]
    """A unary call's future whose attempts may move to other pods."""

    def __init__(self, start: StartAttempt, delay: RetryDelay, abandon: Callable[[], None]) -> None:
        self._start, self._delay, self._abandon = start, delay, abandon
        # Later attempts run on grpcio's and timer threads: keep the caller's context
        # (its current span) so their trace events land where the call was made.
        self._context = contextvars.copy_context()
        self._lock = threading.Lock()
        self._done = threading.Event()
        self._tried: list[Endpoint] = []
        self._callbacks: list[Callable[[Any], None]] = []
        self._current: Any = None
        self._cancelled = False
        self._attempt()

    def _attempt(self) -> None:
        with self._lock:
            if self._cancelled:
                if self._tried:
                    self._abandon()  # the retry granted before the cancel never starts
                return
        try:
            call, connection = self._start(self._tried)
        except LocalRpcError as error:
            self._finish(error)
            return
        except Exception as error:  # never leave the future pending on a timer thread
            self._finish(LocalRpcError(grpc.StatusCode.UNKNOWN, f"grpclb: retry failed: {error}"))
            return
        with self._lock:
            if self._done.is_set():  # cancelled while this attempt was starting
                call.cancel()
                return
            self._current = call
        # Weak references only (see calls.release_when_done): a future the caller drops
        # must be collected, and so cancelled, as grpcio's own would be.
        future_ref, call_ref = weakref.ref(self), weakref.ref(call)

        def ended() -> None:
            future, attempt = future_ref(), call_ref()
            if future is not None and attempt is not None:
                future._in_context(future._attempt_done, attempt, connection)

        if not call.add_callback(ended):
            ended()

    def _in_context(self, function: Callable[..., None], *args: Any) -> None:
        entered = False

        def run() -> None:
            nonlocal entered
            entered = True
            function(*args)

        try:
            self._context.run(run)
        except RuntimeError:
            if entered:
                raise
            function(*args)  # the context is busy in another thread: run without it

    def _attempt_done(self, call: Any, connection: Connection) -> None:
        # Runs on grpcio's thread: decide quickly, never raise, never block.
        try:
            code = None if call.cancelled() else call.code()
            delay = (
                None
                if self._cancelled or code is grpc.StatusCode.OK
                else self._delay(code, len(self._tried))
            )
            if delay is None:
                self._finish(call)
                return
            self._tried.append(connection.endpoint)
            timer = threading.Timer(delay, self._in_context, (self._attempt,))
            timer.daemon = True
            timer.start()
        except Exception:
            log.exception("grpclb: deciding a retry failed")
            self._finish(call)

    def _finish(self, call: Any) -> None:
        with self._lock:
            if self._done.is_set():
                return  # finished already (a cancel won the race)
            self._current = call
            callbacks, self._callbacks = self._callbacks, []
            self._done.set()
        for callback in callbacks:
            try:
                callback(self)
            except Exception:
                log.exception("grpclb: a future's done-callback raised")

    def _final(self, timeout: float | None) -> Any:
        if not self._done.wait(timeout):
            raise grpc.FutureTimeoutError()
        if self._cancelled and self._current is None:
            raise grpc.FutureCancelledError()
        return self._current

    # grpc.Future
    def cancel(self) -> bool:
        with self._lock:
            if self._done.is_set():
                return False
            self._cancelled = True
            current = self._current
        if current is not None and current.cancel():
            self._finish(current)  # done when cancel() returns, as grpcio's future is
            return True
        # No attempt running (waiting out a backoff, or none started): end here; the
        # pending attempt sees the cancel and gives its retry budget back.
        self._finish(None)
        return True

    def cancelled(self) -> bool:
        return self._cancelled and self._done.is_set()

    def running(self) -> bool:
        return not self._done.is_set()

    def done(self) -> bool:
        return self._done.is_set()

    def result(self, timeout: float | None = None) -> Any:
        return self._final(timeout).result()

    def exception(self, timeout: float | None = None) -> Any:
        return self._final(timeout).exception()

    def traceback(self, timeout: float | None = None) -> Any:
        return self._final(timeout).traceback()

    def add_done_callback(self, fn: Callable[[Any], None]) -> None:
        with self._lock:
            if not self._done.is_set():
                self._callbacks.append(fn)
                return
        fn(self)

    # grpc.Call, answered by the final attempt
    def code(self) -> grpc.StatusCode:
        return self._final(None).code()

    def details(self) -> str:
        return str(self._final(None).details())

    def initial_metadata(self) -> Any:
        return self._final(None).initial_metadata()

    def trailing_metadata(self) -> Any:
        return self._final(None).trailing_metadata()

    def is_active(self) -> bool:
        return not self._done.is_set()

    def time_remaining(self) -> float | None:
        current = self._current
        return None if current is None else current.time_remaining()

    def add_callback(self, callback: Callable[[], None]) -> bool:
        current = self._current
        return current is not None and bool(current.add_callback(callback))


class RetryingStream(grpc.Call, grpc.Future):  # type: ignore[misc]
    """A response stream that may restart on another pod until its first message.

    Its callbacks (``add_callback``, ``add_done_callback``) run once, for the
    stream's final outcome: an attempt that fails before its first message
    may yet be replaced, so only the reader, deciding not to retry, ends it.
    """

    def __init__(self, start: StartAttempt, delay: RetryDelay, abandon: Callable[[], None]) -> None:
        self._start, self._delay, self._abandon = start, delay, abandon
        self._tried: list[Endpoint] = []
        self._received = False
        self._cancelled = threading.Event()  # also what a backoff waits on
        self._lock = threading.Lock()
        self._callbacks: list[Callable[[], None]] | None = []  # None once ended
        self._call, self._connection = start(self._tried)
        self._watch(self._call)

    def _watch(self, call: Any) -> None:
        stream_ref, call_ref = weakref.ref(self), weakref.ref(call)  # see release_when_done

        def ended() -> None:
            stream, attempt = stream_ref(), call_ref()
            if stream is None or attempt is None:
                return
            if stream._received or attempt.code() is grpc.StatusCode.OK:
                stream._end()  # a stream that delivered, or ended well, is final

        if not call.add_callback(ended):
            ended()

    def _end(self) -> None:
        with self._lock:
            callbacks, self._callbacks = self._callbacks, None
        for callback in callbacks or ():
            try:
                callback()
            except Exception:
                log.exception("grpclb: a stream's callback raised")

    def __iter__(self) -> RetryingStream:
        return self

    def __next__(self) -> Any:
        while True:
            try:
                message = next(self._call)
            except grpc.RpcError as error:
                delay = None if self._received else self._delay(error.code(), len(self._tried))
                if delay is None:
                    self._end()
                    raise
                self._tried.append(self._connection.endpoint)
                if self._cancelled.wait(delay):
                    self._abandon()  # the granted retry never starts
                    self._end()
                    raise LocalRpcError(
                        grpc.StatusCode.CANCELLED, "Locally cancelled by application!"
                    ) from None
                try:
                    self._call, self._connection = self._start(self._tried)
                except BaseException:
                    self._end()
                    raise
                self._watch(self._call)
                continue
            self._received = True
            return message

    next = __next__

    # grpc.Call and grpc.Future, answered by the current attempt
    def cancel(self) -> bool:
        self._cancelled.set()
        return bool(self._call.cancel())

    def cancelled(self) -> bool:
        return bool(self._call.cancelled())

    def running(self) -> bool:
        return bool(self._call.running())

    def done(self) -> bool:
        return bool(self._call.done())

    def result(self, timeout: float | None = None) -> Any:
        return self._call.result(timeout)

    def exception(self, timeout: float | None = None) -> Any:
        return self._call.exception(timeout)

    def traceback(self, timeout: float | None = None) -> Any:
        return self._call.traceback(timeout)

    def add_done_callback(self, fn: Callable[[Any], None]) -> None:
        if not self.add_callback(lambda: fn(self)):
            fn(self)

    def code(self) -> grpc.StatusCode:
        return self._call.code()

    def details(self) -> str:
        return str(self._call.details())

    def initial_metadata(self) -> Any:
        return self._call.initial_metadata()

    def trailing_metadata(self) -> Any:
        return self._call.trailing_metadata()

    def is_active(self) -> bool:
        return bool(self._call.is_active())

    def time_remaining(self) -> float | None:
        return self._call.time_remaining()  # type: ignore[no-any-return]

    def add_callback(self, callback: Callable[[], None]) -> bool:
        with self._lock:
            if self._callbacks is None:
                return False  # ended: grpcio's contract
            self._callbacks.append(callback)
            return True
