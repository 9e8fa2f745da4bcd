"""A response stream whose attempts may move: retried only before its first message.

What was read cannot be replayed, so a received message commits the call
(gRFC A6); until then a failed attempt is retried on another pod as the
core decides, in the reader's ``next()``. The stream is returned at once,
never blocking its caller while it waits for a pod (``sync.logical._Logical``).
"""

from __future__ import annotations

import threading
import time
from functools import partial
from typing import TYPE_CHECKING, Any

import grpc

from grpclb._grpcio import sync_response_headers
from grpclb.core.attempt import Attempt
from grpclb.core.retry import CallRun
from grpclb.errors import LocalRpcError, cancelled_locally
from grpclb.sync.attempts import release_when_done, weakly
from grpclb.sync.calls import remaining
from grpclb.sync.logical import _OK, _Logical
from grpclb.telemetry import trace_retry

if TYPE_CHECKING:
    from grpclb.sync.calls import _MultiCallable


class LogicalStream(_Logical, grpc.Call, grpc.Future):  # type: ignore[misc]
    """A response stream that may restart on another pod until its first message."""

    def __init__(self, owner: _MultiCallable, run: CallRun, request: Any, digest: Any, args: Any):
        super().__init__(owner, run, request, digest, args)
        self._call: Any = None  # the current attempt's grpcio stream
        self._attempt: Attempt | None = None
        self._received = False
        self._reading = False  # a reader has called next(): it decides retries
        self._ready = threading.Event()  # an attempt started, or the call ended
        self._wake = threading.Event()  # what a backoff waits on: set by cancel()
        self._next_attempt(retry=False)

    def _launch(self, attempt: Attempt) -> None:
        previous = self._run.add_try(attempt.endpoint)
        # Started under the lock: a cancel comes either first, and nothing is sent, or
        # after, and finds the attempt to cancel. (grpcio runs none of grpclb's code
        # before it returns the stream.)
        with self._lock:
            if self._done.is_set() or self._wake.is_set():  # ended, or cancelled meanwhile
                attempt.release(None)  # never sent, no verdict; cancel() ends the call
                return
            try:
                call = self._owner.invoke(
                    attempt,
                    False,
                    self._request,
                    remaining(self._run.deadline),  # (a stream: the call's deadline only)
                    *self._args,
                    previous=previous,
                )
            except Exception as error:  # (invoke released the attempt)
                failure: Exception | None = error
            else:
                failure = None
                self._call, self._attempt = call, attempt
                # Ready before its callback is registered: an attempt that fails at once
                # may clear it again (``_failed_unread``), and must not find it set after.
                self._ready.set()
        if isinstance(failure, LocalRpcError):
            self._finish(failure)
            return
        if failure is not None:  # never leave a reader waiting for an attempt
            self._finish(LocalRpcError(grpc.StatusCode.UNKNOWN, f"grpclb: {failure}"))
            return
        release_when_done(attempt, call, weakly(self, LogicalStream._attempt_ended))

    def _attempt_ended(self, call: Any, code: grpc.StatusCode | None) -> None:
        if self._received or code is _OK or call.cancelled():
            self._finish(call)  # final: it delivered, ended well, or was cancelled
        else:
            self._failed_unread(call)

    def _failed_unread(self, call: Any) -> None:
        """An attempt failed before its first message: decide here if nobody is reading.

        A reader blocked in ``next()`` decides itself (``_may_retry``); a stream
        nobody reads yet (its caller holds it, or only waits for its callbacks)
        is retried from here, on a timer thread as futures are, or ends.
        """
        with self._lock:
            if self._reading or self._call is not call or self._done.is_set():
                return  # the reader decides
            self._call = None
            self._ready.clear()  # a reader arriving now waits for the retry, or the end
        run = self._run
        delay = run.retry_delay(
            call.code(),
            call.trailing_metadata,
            time.monotonic(),
            partial(sync_response_headers, call),
        )
        if delay is None or not self._balancer.reserve_retry():
            if delay is not None:
                trace_retry(call.code(), None)
            with self._lock:
                self._call = call
            self._finish(call)
            return
        trace_retry(call.code(), delay)
        run.attempts += 1
        self._arm_retry(delay)

    def _cancel_requested(self) -> bool:
        return self._wake.is_set()  # cancel() during the backoff

    def _finish(self, final: Any) -> bool:
        won = super()._finish(final)
        self._ready.set()
        return won

    def _current(self, timeout: float | None = None) -> Any:
        """The running attempt's stream (waiting for it to start), or the final error."""
        if not self._ready.wait(timeout):
            raise grpc.FutureTimeoutError()
        with self._lock:
            return self._call if self._call is not None else self._final

    def __iter__(self) -> LogicalStream:
        return self

    def __next__(self) -> Any:
        if not self._reading:
            with self._lock:
                self._reading = True  # from now on the reader decides retries
        while True:
            current = self._current()
            if isinstance(current, LocalRpcError):
                raise current
            try:
                message = next(current)
            except grpc.RpcError as error:
                if self._received or not self._may_retry(error):
                    if self._cancelled:  # cancelled during the backoff
                        self._finish(cancelled_locally())
                        raise self._final from None
                    self._finish(current)
                    raise
                continue
            except StopIteration:
                self._finish(current)
                raise
            if not self._received:
                self._received = True  # A6: a message commits the call
                if self._run.requests is not None:
                    self._run.requests.commit()  # its request stream need not be kept
            return message

    next = __next__

    def _may_retry(self, error: Any) -> bool:
        """Retry before the first message; True when a new attempt is running or pending."""
        run = self._run
        delay = run.retry_delay(
            error.code(),
            error.trailing_metadata,
            time.monotonic(),
            partial(sync_response_headers, error),
        )
        if delay is None or self._done.is_set() or not self._balancer.reserve_retry():
            return False
        trace_retry(error.code(), delay)
        run.attempts += 1
        with self._lock:
            # The failed attempt is behind us: a cancel from now on ends the call (it
            # found that finished attempt and returned False), and waits see the retry.
            self._call = None
            self._ready.clear()
        channel = self._owner._channel
        channel._hold_backoff(self)  # close() ends the wait (``fire``); one before this, the check
        try:
            woken = self._balancer.closed or self._wake.wait(delay)
        finally:
            channel._drop_backoff(self)
        if woken and not self._balancer.closed:  # cancelled during the backoff
            self._balancer.cancel_retry()
            self._cancelled = True
            return False
        # A failure to start is final, and __next__ raises it: on a closed channel,
        # CANCELLED "Channel closed!", as grpcio's close() ends a call.
        self._next_attempt(retry=True)
        return True

    def fire(self) -> None:
        """The channel closed while the reader waited out a backoff: stop waiting."""
        self._wake.set()

    # grpc.Call and grpc.Future, answered by the current attempt
    def cancel(self) -> bool:
        self._wake.set()
        with self._lock:
            call = self._call
            if call is None and self._done.is_set():
                return False
        if call is not None:
            if call.cancel():
                return True
            if self._done.is_set() or self._received or _answered(call):
                return False  # it ended, and that is the outcome
            # It failed before any message, and its retry is being decided: the cancel
            # ends the call instead (the decider sees ``_wake``).
        self._cancelled = True
        self._give_grant_back()  # a retry waiting out its backoff will not start
        self._wake_waiting()  # an attempt waiting for a pod stops waiting
        if not self._finish(cancelled_locally()):
            self._cancelled = False  # it ended first
            return False
        return True

    def cancelled(self) -> bool:
        """Never waits, as grpcio's does not: a call between attempts is not cancelled."""
        with self._lock:
            current = self._call if self._call is not None else self._final
        if self._cancelled:
            return True
        if isinstance(current, LocalRpcError):
            return False  # ended inside grpclb (no pod, channel closed): not a cancel
        return current is not None and bool(current.cancelled())

    def running(self) -> bool:
        return not self._done.is_set()

    def done(self) -> bool:
        return self._done.is_set()

    def _within(self, timeout: float | None) -> tuple[Any, float | None]:
        """The current attempt within ``timeout``, and what is left of it."""
        if timeout is None:
            return self._current(), None
        ends = time.monotonic() + timeout
        current = self._current(timeout)
        return current, max(ends - time.monotonic(), 0.0)

    def result(self, timeout: float | None = None) -> Any:
        current, left = self._within(timeout)
        return current.result(left)

    def exception(self, timeout: float | None = None) -> Any:
        current, left = self._within(timeout)
        return current.exception(left)

    def traceback(self, timeout: float | None = None) -> Any:
        current, left = self._within(timeout)
        return current.traceback(left)

    def code(self) -> grpc.StatusCode:
        return self._current().code()

    def details(self) -> str:
        return str(self._current().details())

    def initial_metadata(self) -> Any:
        return self._current().initial_metadata()

    def trailing_metadata(self) -> Any:
        return self._current().trailing_metadata()


def _answered(call: Any) -> bool:
    """Whether a finished attempt ended well (an answer, not a failure to retry)."""
    try:
        return bool(call.code() is _OK)
    except Exception:  # pragma: no cover - a grpcio stream always has its code once done
        return True
