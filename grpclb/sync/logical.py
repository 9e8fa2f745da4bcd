"""What grpclb's sync futures and response streams share: a logical call over attempts.

A future or a stream is returned to the caller before its outcome is known,
and sometimes before any pod can take it. ``_Logical`` starts attempts
without ever blocking the caller (a pod now, or a short waiting thread when
none is at hand), keeps a retry's budget grant until its backoff ends or a
cancel gives it back, and runs the call's callbacks once, for the final
outcome. ``sync.replay.LogicalFuture`` and ``sync.stream.LogicalStream``
follow the core's decisions on top of it.
"""

from __future__ import annotations

import contextvars
import logging
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import grpc

from grpclb.core.admission import attempt_or_wait
from grpclb.core.attempt import Attempt
from grpclb.core.retry import CallRun
from grpclb.errors import LocalRpcError, cancelled_locally

if TYPE_CHECKING:
    from grpclb.sync.calls import _MultiCallable

log = logging.getLogger("grpclb")
_OK = grpc.StatusCode.OK


def _in_context(context: contextvars.Context, function: Callable[..., None], *args: Any) -> None:
    """Run in the caller's context (its current span), unless another thread is in it."""
    try:
        context.run(function, *args)
    except RuntimeError as error:
        if "context" not in str(error):
            raise
        function(*args)


class BackoffTimer(threading.Thread):
    """A retry's or hedge's timer, as ``threading.Timer``, that ``fire()`` ends early.

    grpcio's close() cancels the calls in flight; a future or stream between
    attempts is one. The channel's close() fires its pending timers, and each
    call then finds the channel closed where its next attempt would start.
    """

    def __init__(self, delay: float, action: Callable[[], None]) -> None:
        super().__init__(name="grpclb backoff", daemon=True)
        self._delay = delay
        self._action = action
        self._wake = threading.Event()
        self._cancelled = False

    def run(self) -> None:
        self._wake.wait(self._delay)
        if not self._cancelled:
            self._action()

    def cancel(self) -> None:
        self._cancelled = True
        self._wake.set()

    def fire(self) -> None:
        self._wake.set()


class _Logical:
    """What futures and streams share: starting attempts without blocking, final callbacks."""

    def __init__(self, owner: _MultiCallable, run: CallRun, request: Any, digest: Any, args: Any):
        self._owner, self._run, self._request = owner, run, request
        self._digest, self._args = digest, args  # args: metadata, credentials, wfr, compression
        self._balancer = owner._balancer
        # Later attempts run on grpcio's and timer threads: keep the caller's context (its
        # current span) so their trace events land where the call was made.
        self._context = contextvars.copy_context()
        self._lock = threading.Lock()
        self._done = threading.Event()
        self._final: Any = None  # the grpcio call, or the LocalRpcError, that decides
        self._callbacks: list[Callable[[], None]] = []
        self._started = time.perf_counter()
        self._cancelled = False
        self._timer: BackoffTimer | None = None  # the pending retry or hedge
        self._grant_armed = False  # a retry's grant that its timer has not taken up yet
        self._waiting = 0  # threads of this call waiting for a pod (``_wait_for_pod``)

    def _pick(self, retry: bool) -> Attempt | None:
        """An attempt now, or None after arranging one on a waiting thread; may raise."""
        run = self._run
        try:
            found = attempt_or_wait(
                self._balancer,
                self._digest,
                run.tried,
                self._owner._method,
                retry,
                bool(self._args[2]),
                run.deadline,
            )
        except BaseException:
            if retry:
                self._balancer.cancel_retry()
            raise
        if isinstance(found, Attempt):
            return found
        # It may wait: do so on a thread, never in the caller's.
        name = f"grpclb wait for pod {self._owner._method}"
        with self._lock:
            self._waiting += 1
        threading.Thread(target=self._wait_for_pod, args=(retry,), name=name, daemon=True).start()
        return None

    def _next_attempt(self, retry: bool) -> None:
        """Start the call's next attempt now or, with no pod at hand, once one comes."""
        try:
            attempt = self._pick(retry)
        except LocalRpcError as error:
            self._finish(error)
            return
        if attempt is not None:
            self._launch(attempt)

    def _cancel_requested(self) -> bool:
        """A cancel the stand-in has not acted on yet (a stream's, during its backoff)."""
        return False

    def _abandoned(self) -> bool:
        """Decided or cancelled: an attempt still to start must not."""
        return self._done.is_set() or self._cancel_requested()

    def _arm_retry(self, delay: float) -> None:
        """The granted retry after ``delay``; a cancel meanwhile gives the grant back."""
        with self._lock:
            self._grant_armed = True
        self._after(delay, self._retry)

    def _take_grant(self) -> bool:
        """Whether the caller took up the armed retry's grant (the timer, or a cancel)."""
        with self._lock:
            armed, self._grant_armed = self._grant_armed, False
        return armed

    def _give_grant_back(self) -> None:
        """A cancel: the retry waiting for its backoff will not start; its grant is free now."""
        if self._take_grant():
            if self._timer is not None:
                self._timer.cancel()
            self._balancer.cancel_retry()

    def _retry(self) -> None:
        """A granted retry's turn, after its backoff; its grant is given back if it never starts."""
        if not self._take_grant():
            return  # a cancel gave it back already
        if self._done.is_set() or self._cancel_requested():
            self._balancer.cancel_retry()
            self._finish(cancelled_locally())  # (a no-op when the call has ended already)
            return
        self._next_attempt(retry=True)

    def _after(self, delay: float, action: Callable[[], None]) -> None:
        timer = BackoffTimer(delay, lambda: _in_context(self._context, action))
        self._timer = timer
        self._owner._channel._hold_backoff(timer)  # close() fires it: see BackoffTimer
        if self._balancer.closed:
            timer.fire()  # closed before the timer was seen: no wait at all
        timer.start()

    def _wait_for_pod(self, retry: bool) -> None:
        try:
            self._wait_for_pod_then_launch(retry)
        finally:
            with self._lock:
                self._waiting -= 1

    def _wake_waiting(self) -> None:
        """Decided or cancelled: this call's threads waiting for a pod (if any) stop waiting."""
        if self._waiting:
            self._owner._channel.wake_waiters()

    def _wait_for_pod_then_launch(self, retry: bool) -> None:
        try:
            channel, run = self._owner._channel, self._run
            attempt = channel._begin(
                self._digest,
                run.deadline,
                bool(self._args[2]),
                run.tried,
                self._owner._method,
                retry,
                self._abandoned,  # cancel() wakes the wait (wake_waiters)
            )
        except LocalRpcError as error:
            self._no_pod(error)
            return
        except Exception as error:
            self._no_pod(LocalRpcError(grpc.StatusCode.UNAVAILABLE, f"grpclb: {error}"))
            return
        _in_context(self._context, self._launch, attempt)

    def _no_pod(self, error: LocalRpcError) -> None:
        """An attempt found no pod in time: with nothing else running, that is the outcome."""
        self._finish(error)

    def _launch(self, attempt: Attempt) -> None:  # pragma: no cover - overridden
        raise NotImplementedError

    def _finish(self, final: Any) -> bool:
        """Make ``final`` the outcome, unless one came first; True when it did."""
        with self._lock:
            if self._done.is_set():
                return False  # finished already (a cancel won the race)
            self._final = final
            callbacks, self._callbacks = self._callbacks, []
            self._done.set()
        code = _OK if final is None else _code_of(final)
        if code is _OK:
            self._run.succeeded()
        self._owner._channel._call_finished(self._owner._method, code, self._started)
        for callback in callbacks:
            try:
                callback()
            except Exception:
                log.exception("grpclb: a call's callback raised")
        return True

    # grpc.Call's callbacks, for the final outcome
    def add_callback(self, callback: Callable[[], None]) -> bool:
        with self._lock:
            if self._done.is_set():
                return False  # ended: grpcio's contract
            self._callbacks.append(callback)
            return True

    def add_done_callback(self, fn: Callable[[Any], None]) -> None:
        if not self.add_callback(lambda: fn(self)):
            fn(self)

    def is_active(self) -> bool:
        return not self._done.is_set()

    def time_remaining(self) -> float | None:
        deadline = self._run.deadline
        return None if deadline is None else max(deadline - time.monotonic(), 0.0)


def _code_of(final: Any) -> grpc.StatusCode | None:
    try:
        return final.code()
    except Exception:
        return None
