"""Stand-ins for grpcio's futures and response streams whose attempts may move.

A future or a stream is returned to the caller before its outcome is known,
and sometimes before any pod can take it. These objects look like grpcio's,
start their attempts without ever blocking the caller (``sync.logical``),
and follow the core's decisions:

- ``LogicalFuture``: retries after a backoff on a timer thread, or, under a
  hedging policy, attempts side by side on different pods, the first final
  answer winning and the others cancelled (gRFC A6). Blocking hedged calls
  wait on one of these.
- ``LogicalStream``: a response stream retried only before its first message,
  since what was read cannot be replayed (A6: a message commits the call).

Every attempt is released by its own callback, which holds neither the call
nor the stand-in strongly, so an abandoned call is collected and cancelled as
grpcio's own would be. Their callbacks (``add_callback``,
``add_done_callback``) run once, for the final outcome.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from functools import partial
from typing import TYPE_CHECKING, Any

import grpc

from grpclb._grpcio import sync_response_headers
from grpclb.core.attempt import Attempt
from grpclb.core.retry import CallRun
from grpclb.errors import LocalRpcError, cancelled_locally
from grpclb.sync.attempts import release_when_done, weakly
from grpclb.sync.logical import _OK, _in_context, _Logical
from grpclb.telemetry import trace_retry

if TYPE_CHECKING:
    from grpclb.sync.calls import _MultiCallable


def _attempt_ended_for(attempt: Attempt) -> Callable[[LogicalFuture, Any, Any], None]:
    def ended(future: LogicalFuture, call: Any, code: grpc.StatusCode | None) -> None:
        _in_context(future._context, future._attempt_done, attempt, call, code)

    return ended


class LogicalFuture(_Logical, grpc.Future, grpc.Call):  # type: ignore[misc]
    """A unary-response call's future over one or more attempts (retries or hedges)."""

    def __init__(self, owner: _MultiCallable, run: CallRun, request: Any, digest: Any, args: Any):
        super().__init__(owner, run, request, digest, args)
        self._running: dict[int, Any] = {}  # id(attempt) -> its grpcio future
        self._closing = False  # decided (answer or cancel): attempts starting now cancel
        self._cancel_error: LocalRpcError | None = None  # the outcome a cancel() offered
        self._failed: Any = None  # the latest failed attempt, the answer if no hedge can follow
        self._next_attempt(retry=False)

    def _launch(self, attempt: Attempt) -> None:
        owner, run = self._owner, self._run
        # Started under the lock: a cancel (or an answer) comes either first, and nothing
        # is sent, or after, and finds the attempt running to cancel it. (grpcio's future()
        # runs none of grpclb's code before it returns.) Hedges launched from two threads
        # at once count the attempts before them one at a time.
        with self._lock:
            previous = run.add_try(attempt.endpoint)
            if self._done.is_set() or self._closing:
                attempt.release(None)  # decided meanwhile: never sent, no verdict
                return
            try:
                timeout = run.attempt_timeout(time.monotonic())
                call = owner.invoke(
                    attempt, True, self._request, timeout, *self._args, previous=previous
                )
            except Exception as error:  # (invoke released the attempt)
                failure: Exception | None = error
            else:
                failure = None
                self._running[id(attempt)] = call
        if isinstance(failure, LocalRpcError):
            self._attempt_failed_to_start(failure)
            return
        if failure is not None:  # never leave the future pending on a timer thread
            self._finish(LocalRpcError(grpc.StatusCode.UNKNOWN, f"grpclb: {failure}"))
            return
        # Weakly: a future the caller drops must be collected, and so cancelled, as
        # grpcio's own would be; the attempt is released regardless.
        release_when_done(attempt, call, weakly(self, _attempt_ended_for(attempt)))
        if run.policy.hedging:
            self._arm_hedge(run.policy.hedging_delay or 0.0)

    def _attempt_failed_to_start(self, error: LocalRpcError) -> None:
        with self._lock:
            others = bool(self._running)
        if not others:
            self._finish(error)

    def _attempt_done(self, attempt: Attempt, call: Any, code: grpc.StatusCode | None) -> None:
        # Runs on grpcio's thread: decide quickly, never block.
        with self._lock:
            self._running.pop(id(attempt), None)
            others = list(self._running.values())
            if self._done.is_set():
                return
        run = self._run
        if code is _OK or self._cancelled or call.cancelled():
            self._commit(call, others)
            return
        status = call.code()
        if run.policy.hedging:
            self._failed = call
            final, delay = run.hedge_failed(status, call.trailing_metadata, time.monotonic())
            if final or (not others and not run.may_hedge(time.monotonic())):
                self._commit(call, others)
            elif delay is not None:
                self._arm_hedge(delay)
            return
        delay = run.retry_delay(
            status, call.trailing_metadata, time.monotonic(), partial(sync_response_headers, call)
        )
        if delay is None or not self._balancer.reserve_retry():
            if delay is not None:
                trace_retry(status, None)
            self._commit(call, others)
            return
        trace_retry(status, delay)
        run.attempts += 1
        self._arm_retry(delay)

    def _commit(self, call: Any, others: list[Any]) -> None:
        """The call's answer is ``call``: the other attempts are cancelled (no verdict on pods),
        unless the call's deadline ended it: they end at it too (``ended_by_deadline``).

        ``_closing`` is set with the last look at the running attempts, under the lock,
        so an attempt starting on another thread meanwhile sees it and cancels itself.
        """
        with self._lock:
            self._closing = True
            others = [*others, *(c for c in self._running.values() if c is not call)]
        if self._timer is not None:
            self._timer.cancel()
        self._finish(call)
        self._wake_waiting()  # a hedge waiting for a pod stops waiting, and gives its grant back
        if others and self._run.ended_by_deadline(call.code(), time.monotonic()):
            return
        for other in others:
            other.cancel()

    def _arm_hedge(self, delay: float) -> None:
        """A6: the next hedge after ``delay``, if the call has no final answer by then."""
        if self._timer is not None:
            self._timer.cancel()
        if self._run.may_hedge(time.monotonic()) and not self._done.is_set():
            self._after(delay, self._hedge)

    def _hedge(self) -> None:
        run = self._run
        if self._done.is_set():
            return
        if not run.may_hedge(time.monotonic()) or not self._balancer.reserve_retry():
            self._hedge_refused(None)
            return
        run.attempts += 1
        try:
            attempt = self._pick(retry=True)
        except LocalRpcError as error:
            self._hedge_refused(error)  # no pod for a hedge now
            return
        if attempt is not None:
            self._launch(attempt)

    def _no_pod(self, error: LocalRpcError) -> None:
        # A hedge that waited for a pod in vain must not end attempts still running.
        with self._lock:
            idle = not self._running
        if idle:
            self._finish(error)

    def _hedge_refused(self, error: LocalRpcError | None) -> None:
        """No further hedge: the running attempts carry on; with none, the last failure stands."""
        with self._lock:
            idle = not self._running
        if idle:
            if error is not None and error.code() is grpc.StatusCode.CANCELLED:
                self._commit(error, [])  # the channel closed: as grpcio's close() ends calls
            else:
                self._commit(self._failed or error or cancelled_locally(), [])

    # grpc.Future
    def cancel(self) -> bool:
        with self._lock:
            if self._done.is_set():
                return False
            self._cancelled = self._closing = True
            running = list(self._running.values())
        for call in running:
            call.cancel()
        self._give_grant_back()  # before the callbacks run: they may start a call
        if self._timer is not None:
            self._timer.cancel()  # a pending hedge (a retry's went with its grant)
        self._wake_waiting()  # an attempt waiting for a pod stops waiting
        # Done when cancel() returns, as grpcio's future is; a pending retry sees it.
        error = self._cancel_error = cancelled_locally()
        if not self._finish(error):
            self._cancelled = False  # an answer came first: the call was not cancelled
            return False
        return True

    def cancelled(self) -> bool:
        """Whether the outcome is the cancel's (an answer that came first is not)."""
        error = self._cancel_error
        return error is not None and self._done.is_set() and self._final is error

    def running(self) -> bool:
        return not self._done.is_set()

    def done(self) -> bool:
        return self._done.is_set()

    def _outcome(self, timeout: float | None) -> Any:
        if not self._done.wait(timeout):
            raise grpc.FutureTimeoutError()
        if self.cancelled():
            raise grpc.FutureCancelledError()
        return self._final

    def result(self, timeout: float | None = None) -> Any:
        return self._outcome(timeout).result()

    def exception(self, timeout: float | None = None) -> Any:
        return self._outcome(timeout).exception()

    def traceback(self, timeout: float | None = None) -> Any:
        return self._outcome(timeout).traceback()

    # grpc.Call, answered by the deciding attempt
    def code(self) -> grpc.StatusCode:
        self._done.wait()
        return self._final.code()

    def details(self) -> str:
        self._done.wait()
        return str(self._final.details())

    def initial_metadata(self) -> Any:
        self._done.wait()
        return self._final.initial_metadata()

    def trailing_metadata(self) -> Any:
        self._done.wait()
        return self._final.trailing_metadata()
