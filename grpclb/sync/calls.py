"""The sync call path: grpc multicallables that choose a pod per call.

Each call picks a connection from the balancer, counts itself in flight there,
and runs on that pod's real grpcio multicallable; its end (in any way: OK,
error, cancel, deadline) releases the count exactly once. Blocking
unary-request calls are retried on another pod when the retry policy allows;
streams stay on their pod until they end.
"""

from __future__ import annotations

import logging
import time
import weakref
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

import grpc

from grpclb.core.admission import Metadata
from grpclb.core.endpoints import Connection, Endpoint
from grpclb.errors import LocalRpcError
from grpclb.sync.replay import RetryingFuture, RetryingStream

if TYPE_CHECKING:
    from grpclb.sync.channel import Channel

log = logging.getLogger("grpclb")
_OK = grpc.StatusCode.OK


# grpcio's details for failures of the caller's own code, which say nothing about the pod.
_CALLERS_OWN_ERRORS = frozenset(
    (
        "Exception iterating requests!",
        "Exception serializing request!",
        "Exception deserializing response!",
    )
)
_MAYBE_CALLERS_OWN = (grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL)


def pod_outcome(code: grpc.StatusCode | None, details: Callable[[], Any]) -> grpc.StatusCode | None:
    """The status to charge to the pod: None when the caller's own code failed."""
    if code in _MAYBE_CALLERS_OWN and details() in _CALLERS_OWN_ERRORS:
        return None
    return code


def connection_closed(connection: Connection) -> LocalRpcError:
    """A call counted on a connection that closed before the call was sent."""
    return LocalRpcError(
        grpc.StatusCode.UNAVAILABLE,
        f"grpclb: the connection to {connection.endpoint.address} closed before the call was sent",
    )


def release_when_done(
    channel: Channel, connection: Connection, retry: bool, method: str, started: float, call: Any
) -> None:
    """Release a future's or stream's count once, when it ends in any way.

    Registered with ``add_callback`` and holding the call only weakly:
    ``add_done_callback`` would bind the call to the callback and keep a call
    the caller abandoned alive, never cancelled. A dead reference means the
    call was collected (grpcio cancels it then). It must never raise: an
    exception here can kill grpcio's polling thread and hang the channel.
    """
    call_ref = weakref.ref(call)

    def release() -> None:
        try:
            ended = call_ref()
            code = None if ended is None else pod_outcome(ended.code(), ended.details)
        except Exception:
            code = None
        try:
            channel._balancer.finish_call(
                connection, code, retry=retry, method=method, started=started
            )
        except Exception:  # pragma: no cover - defensive, see docstring
            log.exception("grpclb: releasing a call failed")

    if not call.add_callback(release):
        release()  # it ended already


class _MultiCallable:
    """What the four kinds share: the method's identity and its per-pod multicallables."""

    _kind = ""

    def __init__(
        self,
        channel: Channel,
        method: str,
        request_serializer: Callable[[Any], bytes] | None,
        response_deserializer: Callable[[bytes], Any] | None,
        registered: bool,
    ) -> None:
        self._channel = channel
        self._method = method
        self._telemetry = channel._balancer.telemetry
        self._key = (self._kind, method, request_serializer, response_deserializer, registered)

    def _on(self, connection: Connection) -> Any:
        found = connection.multicallables.get(self._key)
        return found if found is not None else self._channel._multicallable(connection, self._key)

    def _start(
        self,
        metadata: Metadata,
        deadline: float | None,
        wait_for_ready: bool | None,
        tried: Sequence[Endpoint] = (),
    ) -> Connection:
        return self._channel._begin(metadata, deadline, bool(wait_for_ready), tried, self._method)

    def _nonblocking(
        self,
        future: bool,
        replayable: bool,
        request: Any,
        timeout: float | None,
        metadata: Metadata,
        *rest: Any,
    ) -> Any:
        """A future or a response stream; on a failure before any pod, the error itself."""
        channel = self._channel
        deadline = None if timeout is None else time.monotonic() + timeout
        wait_for_ready = rest[1] if len(rest) > 1 else None

        def start(tried: Sequence[Endpoint]) -> tuple[Any, Connection]:
            retry = bool(tried)
            connection = self._start(metadata, deadline, wait_for_ready, tried)
            started = time.perf_counter() if self._telemetry.enabled else 0.0
            try:
                multicallable = self._on(connection)
                call = (multicallable.future if future else multicallable)(
                    request, _remaining(deadline), metadata, *rest
                )
            except BaseException as error:
                channel._balancer.finish_call(connection, None, retry=retry)
                if isinstance(error, ValueError) and connection.closing:
                    raise connection_closed(connection) from None
                raise
            release_when_done(channel, connection, retry, self._method, started, call)
            return call, connection

        try:
            if replayable and channel.settings.retries:

                def delay(code: grpc.StatusCode | None, retries_done: int) -> float | None:
                    return channel._balancer.retry_delay(code, retries_done, deadline)

                if future:
                    return RetryingFuture(start, delay, channel._balancer.cancel_retry)
                return RetryingStream(start, delay, channel._balancer.cancel_retry)
            return start(())[0]
        except LocalRpcError as error:
            # grpcio's future() and streams never raise: the error is a finished call.
            return error

    def _blocking(self, *args: Any) -> Any:
        # gRFC A66's grpc.client.call.duration: one logical call, its retries inside.
        return self._telemetry.timed(self._method, self._attempts, *args)

    def _attempts(
        self,
        with_call: bool,
        replayable: bool,
        request: Any,
        timeout: float | None,
        metadata: Metadata,
        credentials: grpc.CallCredentials | None,
        wait_for_ready: bool | None,
        compression: grpc.Compression | None,
    ) -> Any:
        channel = self._channel
        deadline = None if timeout is None else time.monotonic() + timeout
        tried: list[Endpoint] = []
        while True:
            connection = self._start(metadata, deadline, wait_for_ready, tried)
            started = time.perf_counter() if self._telemetry.enabled else 0.0
            code = None
            try:
                multicallable = self._on(connection)
                if with_call:
                    multicallable = multicallable.with_call
                result = multicallable(
                    request,
                    _remaining(deadline),
                    metadata,
                    credentials,
                    wait_for_ready,
                    compression,
                )
                code = _OK
                return result
            except LocalRpcError as error:  # its connection closed before it was sent
                failure = error
            except grpc.RpcError as error:
                failure = error
                code = pod_outcome(error.code(), error.details)
            except ValueError:
                if not connection.closing:
                    raise
                failure = connection_closed(connection)  # closed by a grace or close()
            finally:
                channel._balancer.finish_call(
                    connection, code, retry=bool(tried), method=self._method, started=started
                )
            # Decided after the release, as futures and aio calls do, so the failed attempt
            # no longer counts in the retry budget's calls in flight.
            delay = None
            if replayable:
                delay = channel._balancer.retry_delay(failure.code(), len(tried), deadline)
            if delay is None:
                raise failure
            tried.append(connection.endpoint)
            time.sleep(delay)


def _remaining(deadline: float | None) -> float | None:
    return None if deadline is None else max(deadline - time.monotonic(), 0.0)


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
            False, True, request, timeout, metadata, credentials, wait_for_ready, compression
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
            True, True, request, timeout, metadata, credentials, wait_for_ready, compression
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
            True, True, request, timeout, metadata, credentials, wait_for_ready, compression
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
            False, True, request, timeout, metadata, credentials, wait_for_ready, compression
        )


class StreamUnary(_MultiCallable, grpc.StreamUnaryMultiCallable):  # type: ignore[misc]
    _kind = "stream_unary"

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
            False,
            False,
            request_iterator,
            timeout,
            metadata,
            credentials,
            wait_for_ready,
            compression,
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
            True,
            False,
            request_iterator,
            timeout,
            metadata,
            credentials,
            wait_for_ready,
            compression,
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
            True,
            False,
            request_iterator,
            timeout,
            metadata,
            credentials,
            wait_for_ready,
            compression,
        )


class StreamStream(_MultiCallable, grpc.StreamStreamMultiCallable):  # type: ignore[misc]
    _kind = "stream_stream"

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
            False,
            False,
            request_iterator,
            timeout,
            metadata,
            credentials,
            wait_for_ready,
            compression,
        )
