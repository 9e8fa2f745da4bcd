"""The asyncio call path: grpc.aio calls that choose a pod per call.

A grpc.aio call object is returned before its outcome is known, and may be
returned before any pod is known (before the first DNS answer, or while
``wait_for_ready`` waits for a READY pod), so every call is a small stand-in
that starts its attempt at once when it can, later when it must. What
follows a failure is the core's decision (``core.retry``): the task awaiting
a unary-request call retries, or hedges, as the decision says.

A call nobody awaits yet is retried in the background, as grpcio's own
retries are (``_attempt_done``, ``_decide_undriven``).

Two grpc.aio behaviours shape this module (GRPCIO_NOTES):
- ``Call.__del__`` runs done-callbacks synchronously, inside the garbage
  collector: an attempt's done-callback (``aio.attempts.AioAttempt``)
  never takes the balancer's lock, and nothing it holds outlives the call.
- grpc.aio's reads and writes await outside their own cancel handling, so a
  task cancelled there leaves the RPC running. Every await here on an
  attempt cancels the attempt when the awaiting task is cancelled.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, cast

import grpc
import grpc.aio

from grpclb._grpcio import aio_finished_status
from grpclb.aio.attempts import AioAttempt
from grpclb.aio.errors import as_aio_error, cancelled_error, raisable
from grpclb.core.admission import Metadata, request_hash
from grpclb.core.attempt import Attempt
from grpclb.core.retry import CallRun, Replayed, with_previous_attempts
from grpclb.errors import LocalRpcError
from grpclb.telemetry import trace_retry

if TYPE_CHECKING:
    from grpclb.aio.multicallables import _MultiCallable

log = logging.getLogger("grpclb")
_OK = grpc.StatusCode.OK
_CANCELLED = grpc.StatusCode.CANCELLED
_DEADLINE_EXCEEDED = grpc.StatusCode.DEADLINE_EXCEEDED
_REMAINING: Any = object()  # ``_invoke``'s default timeout: what remains of the deadline


class _Call:
    """One logical call: its attempts on pods, and grpc.aio's Call interface over them."""

    # What most calls never change is a class default, not a per-call assignment.
    _attempt: Any = None  # the current grpc.aio call
    _handle: Attempt | None = None  # its hold on a pod
    _error: grpc.aio.AioRpcError | None = None
    _callbacks: list[Callable[[Any], None]] | None = None
    _settled = False
    _driven = False  # someone awaits or iterates, and so decides retries
    _awaiting: Any = None  # the attempt a task is awaiting right now, if any
    _starter: asyncio.Task[None] | None = None
    _run: CallRun | None = None  # made by ``_progress()``, when a second attempt is considered
    _hedges: dict[Any, Attempt] | None = None  # the hedges running, under a hedging policy
    _hedger: asyncio.Event | None = None  # wakes the hedging driver (``_hedged``)
    _deciding = False  # an attempt nobody awaited failed: a task decides its retry
    _grant_unused = False  # a retry's grant its starter has not taken up yet
    _requests: Replayed | None = None  # a request stream kept for retries (``_Writes``)
    _metadata: Metadata = None
    _credentials: grpc.CallCredentials | None = None
    _compression: grpc.Compression | None = None
    _digest: int | None = None  # the hash key's digest, when the call has metadata
    _began = 0.0  # time.perf_counter() at the call's start, when calls are timed
    _deadline: float | None = None  # time.monotonic() at which the call ends, if it has one
    # Its attempts end at the retry policy's perAttemptRecvTimeout: unary-response calls.
    _attempts_timed = False

    def __init__(
        self,
        owner: _MultiCallable,
        request: Any,
        timeout: float | None = None,
        metadata: Metadata = None,
        credentials: grpc.CallCredentials | None = None,
        wait_for_ready: bool | None = None,
        compression: grpc.Compression | None = None,
    ) -> None:
        channel = owner._channel
        self._owner, self._channel, self._request = owner, channel, request
        policy = self._policy = owner.policy
        timeout, self._wait_for_ready = policy.call_limits(timeout, wait_for_ready)
        if timeout is not None:
            self._deadline = time.monotonic() + timeout
        # Most calls have none of these: the class defaults stand, one store less each.
        if metadata is not None:
            self._metadata = metadata
            if metadata:
                self._digest = request_hash(metadata, channel._hash_key)
        if credentials is not None:
            self._credentials = credentials
        if compression is not None:
            self._compression = compression
        if channel._timed:
            self._began = time.perf_counter()
        self._loop = channel._loop or channel._ensure_started()
        if policy.attempt_timeout is not None and self._attempts_timed:
            self._progress()  # the run times each attempt, the first one too
        balancer = channel._balancer
        if balancer.closed:
            raise grpc.aio.UsageError("Cannot invoke RPC on closed channel!")
        try:
            attempt = balancer.start_call(
                self._digest, (), owner._method, False, self._wait_for_ready
            )
        except LocalRpcError as error:
            self._fail(as_aio_error(error))
            return
        if attempt is not None:
            self._invoke(attempt, timeout)  # started now: all of its timeout remains
        else:
            # No pod yet: start as soon as there is one, awaited or not, as grpc.aio
            # starts every call when it is made.
            self._starter = channel._spawn(self._start_attempt(False))

    def _invoke(self, attempt: Attempt, timeout: Any = _REMAINING) -> Any:
        """Start ``attempt`` with ``timeout``, by default what remains of the call's deadline
        (or, for a unary response, the attempt's own: ``CallRun.attempt_timeout``)."""
        metadata = self._metadata
        run = self._run
        if run is not None:  # a later attempt: it says how many came before (A6)
            metadata = with_previous_attempts(metadata, run.add_try(attempt.endpoint))
            if self._attempts_timed:
                timeout = run.attempt_timeout(time.monotonic())
        if timeout is _REMAINING:
            deadline = self._deadline
            timeout = None if deadline is None else max(deadline - time.monotonic(), 0.0)
        owner = self._owner
        method = attempt.connection.multicallables.get(owner._key) or owner.on(attempt)
        try:
            call = method(
                self._request,
                timeout=timeout,
                metadata=metadata,
                credentials=self._credentials,
                wait_for_ready=self._wait_for_ready,
                compression=self._compression,
            )
        except BaseException:
            attempt.release(None)
            raise
        cast(AioAttempt, attempt).watch(self, call, owner._kind == "unary_unary")
        self._attempt, self._handle = call, attempt
        return call

    async def _start_attempt(self, retry: bool, backoff: float = 0.0) -> None:
        """Wait out ``backoff``, wait for a pod, start an attempt; a failure becomes the error.

        Always a task of its own (``_starter``): every task using the call shares it,
        so the call (or its retry) starts once, and ``cancel()`` reaches it anywhere.
        """
        if retry:
            self._grant_unused = False  # from here, this task gives the grant back itself
        if backoff:
            try:
                await self._channel._backoff(backoff)
            except BaseException:
                self._channel._balancer.cancel_retry()  # the granted retry never starts
                raise
        try:
            attempt = await self._channel._begin(
                self._digest,
                self._deadline,
                self._wait_for_ready,
                () if self._run is None else self._run.tried,
                self._owner._method,
                retry,
            )
        except LocalRpcError as error:
            self._fail(as_aio_error(error))
            return
        if self._error is None and not self._settled:  # not cancelled meanwhile
            self._invoke(attempt)
        else:
            attempt.release(None)

    def _grant_back(self, starter: asyncio.Task[None]) -> None:
        """A retry's starter cancelled before it ran: nothing else gives its grant back."""
        if self._grant_unused:
            self._grant_unused = False
            self._channel._balancer.cancel_retry()

    async def _started(self) -> Any:
        """The current attempt, after waiting for its start (a pod, a retry's backoff)."""
        if self._attempt is None and self._error is None:
            starter = self._starter
            if starter is not None and not starter.done():
                # Shared by every task using the call (a reader and a writer, say), so
                # the call starts once; cancel() cancels it, and so every waiter.
                await asyncio.shield(starter)
        if self._attempt is None:
            if self._error is None:  # pragma: no cover - a starter that failed unexpectedly
                self._fail(
                    as_aio_error(LocalRpcError(grpc.StatusCode.UNKNOWN, "grpclb: no attempt"))
                )
            assert self._error is not None
            if self._error.code() is _CANCELLED:
                raise asyncio.CancelledError()  # as grpc.aio's cancelled calls do
            raise raisable(self._error)
        return self._attempt

    async def _on_attempt(self, work: Any) -> Any:
        """Await ``work`` on the current attempt; a cancelled task cancels the attempt too."""
        try:
            return await work
        except asyncio.CancelledError:
            self.cancel()
            raise

    def _progress(self) -> CallRun:
        """The call's way through its policy, made when first needed: most calls end at
        their first attempt and never need one."""
        run = self._run
        if run is None:
            run = self._run = CallRun(self._policy, self._deadline, self._requests)
            if self._handle is not None:
                run.tried.append(self._handle.endpoint)  # the attempt made before it
        return run

    def _retry_after(self, error: grpc.aio.AioRpcError) -> bool:
        """Arrange the next attempt after a failure; False when the failure is final."""
        if self._settled:
            return False  # cancelled while the failure was being looked at
        run = self._progress()
        delay = run.retry_delay(
            error.code(), error.trailing_metadata, time.monotonic(), error.initial_metadata
        )
        if delay is None:
            return False
        if not self._channel._balancer.reserve_retry():
            trace_retry(error.code(), None)
            return False
        trace_retry(error.code(), delay)
        run.attempts += 1
        self._attempt = self._handle = None
        self._grant_unused = True
        starter = self._starter = self._channel._spawn(self._start_attempt(True, delay))
        starter.add_done_callback(self._grant_back)
        return True

    def _fail(self, error: grpc.aio.AioRpcError) -> None:
        if self._settled:
            return  # the first outcome stands (a cancel is not overwritten by a deadline)
        self._error = error
        self._settle(error.code())

    def _attempt_done(self, call: Any) -> None:
        """An attempt ended that no task was awaiting (runs inside grpc.aio's callback)."""
        if call is self._attempt and call.cancelled():
            self._settle(aio_finished_status(call))  # cancelled: the call's outcome
            return
        if self._driven:
            return  # the driving task decides (a hedge that lost is not the attempt)
        code = aio_finished_status(call)
        policy = self._policy
        timed_out = code is _DEADLINE_EXCEEDED and policy.attempt_timeout and self._attempts_timed
        if policy.max_attempts > 1 and (code in policy.codes or timed_out):
            # Nobody awaits the call yet (its writer writes, its reader has not begun):
            # its retry is decided in the background, as grpcio's own retries are,
            # by a task, not here inside grpc.aio's callback.
            self._deciding = True
            self._loop.call_soon(self._decide_later, call)
            return
        self._settle(code)

    def _decide_later(self, call: Any) -> None:
        self._channel._spawn(self._decide_undriven(call))

    async def _decide_undriven(self, call: Any) -> None:
        """Retry a failed attempt nobody awaited, as its policy says; or let it stand."""
        error: grpc.aio.AioRpcError | None = None
        try:  # (a stream's call cannot be awaited: ask it what a failure would say)
            code, trailing = await call.code(), await call.trailing_metadata()
            error = grpc.aio.AioRpcError(code, await call.initial_metadata(), trailing)
        except BaseException:  # pragma: no cover - cancelled meanwhile: its outcome stands
            pass
        self._deciding = False
        if self._driven or self._settled or call is not self._attempt:
            return  # a task began awaiting it meanwhile, and decided
        if error is None or not self._retry_after(error):
            self._settle(aio_finished_status(call))

    def _settle(self, code: grpc.StatusCode | None) -> None:
        if self._settled:
            return
        self._settled = True
        throttle = self._policy.throttle
        if code is _OK and throttle is not None:
            throttle.record_success()  # A6: a success earns a token back (as the sync path)
        if self._began:
            self._channel._call_finished(self._owner._method, code, self._began)
        callbacks = self._callbacks
        if callbacks is None:
            return
        self._callbacks = None
        for callback in callbacks:
            try:
                callback(self)
            except Exception:
                log.exception("grpclb: a call's done-callback raised")

    # grpc.aio.RpcContext
    def cancel(self) -> bool:
        hedges = self._hedges
        if hedges:
            if any(aio_finished_status(call) is _OK for call in hedges):
                return False  # a hedge answered, not yet seen by its driver: the answer stands
            # The latest hedge may have failed while an earlier one runs: cancel every
            # hedge running; the driver ends the call when it sees them cancelled.
            if any([call.cancel() for call in list(hedges)]):
                return True
        attempt = self._attempt
        if (
            attempt is not None
            and not self._settled
            and attempt.done()
            and aio_finished_status(attempt) is not _OK
        ):
            # It failed, and what follows is being decided (its retry or next hedge, by a
            # task awaiting or reading the call, or in the background): the cancel ends
            # the call instead.
            attempt = self._attempt = self._handle = None
        if attempt is not None:
            cancelled = bool(attempt.cancel())
            if cancelled and self._awaiting is attempt:
                # Done at once, as a grpc.aio call is; the awaiting task, when it resumes
                # with the CancelledError, finds the outcome settled and releases the pod.
                self._settle(_CANCELLED)
            return cancelled
        if self._settled:
            return False
        if self._starter is not None:
            self._starter.cancel()
        self._fail(cancelled_error())
        if self._hedger is not None:
            self._hedger.set()  # a hedged call waiting for its next hedge learns of it
        return True

    def cancelled(self) -> bool:
        if self._attempt is not None:
            return bool(self._attempt.cancelled())
        return self._error is not None and self._error.code() is _CANCELLED

    def done(self) -> bool:
        return self._settled or (
            self._attempt is not None
            and self._attempt.done()
            and not self._driven
            and not self._deciding
        )

    def time_remaining(self) -> float | None:
        deadline = self._deadline
        return None if deadline is None else max(deadline - time.monotonic(), 0.0)

    def add_done_callback(self, callback: Callable[[Any], None]) -> None:
        if self._settled:
            callback(self)
        elif self._callbacks is None:
            self._callbacks = [callback]
        else:
            self._callbacks.append(callback)

    # grpc.aio.Call
    async def initial_metadata(self) -> Any:
        return await (await self._started()).initial_metadata()

    async def trailing_metadata(self) -> Any:
        if self._error is None:
            await self._wait_settled()
        if self._error is not None:
            return self._error.trailing_metadata()
        return await self._attempt.trailing_metadata()

    async def code(self) -> grpc.StatusCode:
        if self._error is None:
            await self._wait_settled()
        return self._error.code() if self._error is not None else await self._attempt.code()

    async def details(self) -> str:
        if self._error is None:
            await self._wait_settled()
        if self._error is not None:
            return str(self._error.details())
        return str(await self._attempt.details())

    async def wait_for_connection(self) -> None:
        await self._on_attempt((await self._started()).wait_for_connection())

    async def _wait_settled(self) -> None:
        """Until the outcome is known: the attempt's end, and a retry nobody awaits after it.

        (A call a task reads decides its retries as it reads: then the current
        attempt's end is what is known.)
        """
        while True:
            try:
                attempt = await self._started()
            except (grpc.RpcError, asyncio.CancelledError):
                if self._error is None:
                    raise  # the asking task was cancelled, not the call
                return  # failed before any pod, or cancelled
            with contextlib.suppress(grpc.RpcError):
                await attempt.code()
            if self._settled or (attempt is self._attempt and not self._deciding):
                return
            await asyncio.sleep(0)  # a background retry is being decided (a few loop turns)

    def __repr__(self) -> str:
        return f"<grpclb.aio call {self._owner._method} attempt={self._attempt!r}>"
