"""The sync call path: grpc multicallables that choose a pod per call.

Each attempt is an ``Attempt`` from the balancer, released exactly once when
the attempt ends in any way (OK, error, cancel, deadline). What happens after
a failure is the core's decision (``core.retry``); this module only executes
it in the three shapes grpcio's sync API has: a blocking call retries in a
loop in the caller's thread, and futures and response streams hand off to
``sync.replay``, which never blocks the caller while it waits for a pod.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from functools import partial
from typing import TYPE_CHECKING, Any, TypeVar

import grpc

from grpclb._grpcio import sync_response_headers
from grpclb.core.admission import Metadata, request_hash
from grpclb.core.attempt import Attempt
from grpclb.core.endpoints import Connection
from grpclb.core.request_buffer import RequestBuffer
from grpclb.core.retry import CallRun, with_previous_attempts
from grpclb.errors import LocalRpcError
from grpclb.sync.attempts import connection_closed, pod_outcome, release_when_done
from grpclb.telemetry import trace_retry

if TYPE_CHECKING:
    from grpclb.sync.channel import Channel

log = logging.getLogger("grpclb")
T = TypeVar("T")
_OK = grpc.StatusCode.OK


def remaining(deadline: float | None) -> float | None:
    return None if deadline is None else max(deadline - time.monotonic(), 0.0)


class _MultiCallable:
    """What the four kinds share: the method, its policy and its per-pod multicallables."""

    _kind = ""
    _request_stream = False  # requests are an iterator: kept in a buffer for retries

    def __init__(
        self,
        channel: Channel,
        method: str,
        request_serializer: Callable[[Any], bytes] | None,
        response_deserializer: Callable[[bytes], Any] | None,
        registered: bool,
    ) -> None:
        self._channel = channel
        self._balancer = channel._balancer
        self._method = method
        self._key = (self._kind, method, request_serializer, response_deserializer, registered)
        self.policy = channel._policy_for(method, self._request_stream)
        self._timed = channel._balancer.telemetry.enabled  # records call durations

    def on(self, connection: Connection) -> Any:
        """The pod's own grpcio multicallable for this method, created once."""
        found = connection.multicallables.get(self._key)
        return found if found is not None else self._channel._multicallable(connection, self._key)

    def _prepare(
        self, timeout: float | None, metadata: Metadata, wait_for_ready: bool | None
    ) -> tuple[float | None, bool, int | None]:
        """(deadline, wait_for_ready, request hash): the call's own values, then its config's."""
        self._channel._check_usable()
        timeout, wait = self.policy.call_limits(timeout, wait_for_ready)
        deadline = None if timeout is None else time.monotonic() + timeout
        return deadline, wait, request_hash(metadata, self._channel._hash_key)

    def _buffer(self, requests: Iterator[Any]) -> RequestBuffer | None:
        """A request stream kept for retries, if its policy may retry it (else read once)."""
        if self.policy.max_attempts == 1:
            return None
        limit = self._channel._settings.retry_buffer_bytes
        serializer = self._key[2]  # (kind, method, request_serializer, ...)
        return RequestBuffer(requests, limit, serializer)

    def invoke(
        self,
        attempt: Attempt,
        future: bool,
        request: Any,
        timeout: float | None,
        *args: Any,
        previous: int = 0,
    ) -> Any:
        """Start ``attempt`` as a grpcio future or response stream; nothing is released here.

        ``timeout``: the attempt's (``CallRun.attempt_timeout``); ``args``: metadata,
        credentials, wait_for_ready, compression; ``previous``: the attempts of the call
        before this one (``with_previous_attempts``).
        """
        if type(request) is RequestBuffer:
            request = request.attempt()  # what earlier attempts sent, then the rest
        if previous:
            args = (with_previous_attempts(args[0], previous), *args[1:])
        try:
            multicallable = self.on(attempt.connection)
            if future:
                multicallable = multicallable.future
            return multicallable(request, timeout, *args)
        except BaseException as error:
            attempt.release(None)
            if isinstance(error, ValueError) and attempt.connection.closing:
                raise connection_closed(attempt.connection) from None
            raise

    def _nonblocking(
        self,
        future: bool,
        request: Any,
        timeout: float | None,
        metadata: Metadata,
        credentials: grpc.CallCredentials | None,
        wait_for_ready: bool | None,
        compression: grpc.Compression | None,
    ) -> Any:
        """A future or a response stream; never blocks, as grpcio's never do."""
        from grpclb.sync.replay import LogicalFuture
        from grpclb.sync.stream import LogicalStream

        deadline, wait, digest = self._prepare(timeout, metadata, wait_for_ready)
        args = (metadata, credentials, wait, compression)
        if self.policy.max_attempts == 1:
            # Nothing to decide after the first attempt: grpcio's own object, when a pod
            # is at hand now (otherwise a stand-in that starts it later).
            try:
                attempt = self._balancer.start_call(digest, (), self._method, ready_only=wait)
            except LocalRpcError as error:
                return error  # grpcio's future() and streams never raise: a finished call
            if attempt is not None:
                call = self.invoke(attempt, future, request, remaining(deadline), *args)
                release_when_done(attempt, call, self._channel._call_timer(self._method))
                return call
        requests = self._buffer(request) if self._request_stream else None
        run = CallRun(self.policy, deadline, requests)
        if requests is not None:
            request = requests
        if future:
            return LogicalFuture(self, run, request, digest, args)
        return LogicalStream(self, run, request, digest, args)

    def _blocking(
        self,
        with_call: bool,
        request: Any,
        timeout: float | None,
        metadata: Metadata,
        credentials: grpc.CallCredentials | None,
        wait_for_ready: bool | None,
        compression: grpc.Compression | None,
    ) -> Any:
        deadline, wait, digest = self._prepare(timeout, metadata, wait_for_ready)
        policy = self.policy
        if policy.hedging:  # attempts side by side: the future's machinery, waited on
            from grpclb.sync.replay import LogicalFuture

            args = (metadata, credentials, wait, compression)
            call = LogicalFuture(self, CallRun(policy, deadline), request, digest, args)
            result = call.result()
            return (result, call) if with_call else result
        channel, balancer, method = self._channel, self._balancer, self._method
        requests = self._buffer(request) if self._request_stream else None
        timed = self._timed
        started = time.perf_counter() if timed else 0.0
        # Made on the first failure: the common call never needs it. (With a per-attempt
        # timeout, made now: it times every attempt.)
        run = None if policy.attempt_timeout is None else CallRun(policy, deadline, requests)
        retry = False
        while True:
            try:
                # The common case first: a pod at hand, no waiting, no retry to account for.
                attempt = None if retry else balancer.start_call(digest, (), method, False, wait)
                if attempt is None:
                    tried = () if run is None else run.tried
                    attempt = channel._begin(digest, deadline, wait, tried, method, retry)
            except LocalRpcError as error:  # no pod in time, or the circuit breaker refused
                if timed:
                    channel._call_finished(method, error.code(), started)
                raise
            code = None
            try:
                multicallable = self.on(attempt.connection)
                if with_call:
                    multicallable = multicallable.with_call
                result = multicallable(
                    request if requests is None else requests.attempt(),
                    remaining(deadline) if run is None else run.attempt_timeout(time.monotonic()),
                    metadata if run is None else with_previous_attempts(metadata, len(run.tried)),
                    credentials,
                    wait,
                    compression,
                )
                code = _OK
            except LocalRpcError as error:  # its connection closed before it was sent
                failure: Any = error
            except grpc.RpcError as error:
                failure = error
                code = pod_outcome(error.code(), error.details)
            except ValueError:
                if not attempt.connection.closing:
                    attempt.release(None)
                    raise
                failure = connection_closed(attempt.connection)  # closed by a grace or close()
            except BaseException:
                attempt.release(None)  # KeyboardInterrupt and the like: no verdict
                raise
            attempt.release(code)
            if code is _OK:
                if policy.throttle is not None:
                    policy.throttle.record_success()  # A6: a success earns a token back
                if timed:
                    channel._call_finished(method, _OK, started)
                return result
            if run is None:
                run = CallRun(policy, deadline, requests)
            # Decided after the release, as futures and aio calls do.
            run.tried.append(attempt.endpoint)
            delay = run.retry_delay(
                failure.code(),
                failure.trailing_metadata,
                time.monotonic(),
                partial(sync_response_headers, failure),
            )
            if delay is None or not balancer.reserve_retry():
                if delay is not None:
                    trace_retry(failure.code(), None)  # over budget
                if timed:
                    channel._call_finished(method, failure.code(), started)
                raise failure
            trace_retry(failure.code(), delay)
            run.attempts += 1
            retry = True
            try:
                channel._backoff(delay)
            except BaseException:
                balancer.cancel_retry()
                raise


class UnaryUnary(_MultiCallable, grpc.UnaryUnaryMultiCallable):  # type: ignore[misc]
    _kind = "unary_unary"

    def __call__(
        self,
        request: Any,
        timeout: float | None = None,
        metadata: Metadata = None,
        credentials: grpc.CallCredentials | None = None,
        wait_for_ready: bool | None = None,
        compression: grpc.Compression | None = None,
    ) -> Any:
        return self._blocking(
            False, request, timeout, metadata, credentials, wait_for_ready, compression
        )

    def with_call(
        self,
        request: Any,
        timeout: float | None = None,
        metadata: Metadata = None,
        credentials: grpc.CallCredentials | None = None,
        wait_for_ready: bool | None = None,
        compression: grpc.Compression | None = None,
    ) -> Any:
        return self._blocking(
            True, request, timeout, metadata, credentials, wait_for_ready, compression
        )

    def future(
        self,
        request: Any,
        timeout: float | None = None,
        metadata: Metadata = None,
        credentials: grpc.CallCredentials | None = None,
        wait_for_ready: bool | None = None,
        compression: grpc.Compression | None = None,
    ) -> Any:
        return self._nonblocking(
            True, request, timeout, metadata, credentials, wait_for_ready, compression
        )


class UnaryStream(_MultiCallable, grpc.UnaryStreamMultiCallable):  # type: ignore[misc]
    _kind = "unary_stream"

    def __call__(
        self,
        request: Any,
        timeout: float | None = None,
        metadata: Metadata = None,
        credentials: grpc.CallCredentials | None = None,
        wait_for_ready: bool | None = None,
        compression: grpc.Compression | None = None,
    ) -> Any:
        return self._nonblocking(
            False, request, timeout, metadata, credentials, wait_for_ready, compression
        )


class StreamUnary(_MultiCallable, grpc.StreamUnaryMultiCallable):  # type: ignore[misc]
    _kind = "stream_unary"
    _request_stream = True

    def __call__(
        self,
        request_iterator: Iterator[Any],
        timeout: float | None = None,
        metadata: Metadata = None,
        credentials: grpc.CallCredentials | None = None,
        wait_for_ready: bool | None = None,
        compression: grpc.Compression | None = None,
    ) -> Any:
        return self._blocking(
            False, request_iterator, timeout, metadata, credentials, wait_for_ready, compression
        )

    def with_call(
        self,
        request_iterator: Iterator[Any],
        timeout: float | None = None,
        metadata: Metadata = None,
        credentials: grpc.CallCredentials | None = None,
        wait_for_ready: bool | None = None,
        compression: grpc.Compression | None = None,
    ) -> Any:
        return self._blocking(
            True, request_iterator, timeout, metadata, credentials, wait_for_ready, compression
        )

    def future(
        self,
        request_iterator: Iterator[Any],
        timeout: float | None = None,
        metadata: Metadata = None,
        credentials: grpc.CallCredentials | None = None,
        wait_for_ready: bool | None = None,
        compression: grpc.Compression | None = None,
    ) -> Any:
        return self._nonblocking(
            True, request_iterator, timeout, metadata, credentials, wait_for_ready, compression
        )


class StreamStream(_MultiCallable, grpc.StreamStreamMultiCallable):  # type: ignore[misc]
    _kind = "stream_stream"
    _request_stream = True

    def __call__(
        self,
        request_iterator: Iterator[Any],
        timeout: float | None = None,
        metadata: Metadata = None,
        credentials: grpc.CallCredentials | None = None,
        wait_for_ready: bool | None = None,
        compression: grpc.Compression | None = None,
    ) -> Any:
        return self._nonblocking(
            False, request_iterator, timeout, metadata, credentials, wait_for_ready, compression
        )
