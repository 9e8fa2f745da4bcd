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
from collections.abc import Callable, Iterator, Sequence
from functools import partial
from typing import TYPE_CHECKING, Any

import grpc

from grpclb.admission import Metadata
from grpclb.endpoints import Connection, Endpoint
from grpclb.errors import LocalRpcError
from grpclb.replay import RetryingFuture, RetryingStream

if TYPE_CHECKING:
    from grpclb.channel import Channel

log = logging.getLogger("grpclb")
_OK = grpc.StatusCode.OK


def release_when_done(
    channel: Channel, connection: Connection, retry: bool, method: str, started: float, call: Any
) -> None:
    """Done-callback of a future or stream: release its count once.

    It must never raise (an exception here can kill grpcio's polling thread
    and hang the pod's channel), and it holds no reference to the call.
    """
    try:
        code = call.code()
    except Exception:
        code = None
    try:
        channel._balancer.finish_call(connection, code, retry=retry, method=method, started=started)
    except Exception:  # pragma: no cover - defensive, see docstring
        log.exception("grpclb: releasing a call failed")


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
            multicallable = self._on(connection)
            try:
                call = (multicallable.future if future else multicallable)(
                    request, _remaining(deadline), metadata, *rest
                )
            except BaseException:
                channel._balancer.finish_call(connection, None, retry=retry)
                raise
            call.add_done_callback(
                partial(release_when_done, channel, connection, retry, self._method, started)
            )
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

    def _blocking(
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
            multicallable = self._on(connection)
            if with_call:
                multicallable = multicallable.with_call
            code = None
            try:
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
            except grpc.RpcError as error:
                code = error.code()
                delay = None
                if replayable:
                    delay = channel._balancer.retry_delay(code, len(tried), deadline)
                if delay is None:
                    raise
            finally:
                channel._balancer.finish_call(
                    connection, code, retry=bool(tried), method=self._method, started=started
                )
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
