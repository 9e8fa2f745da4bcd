"""The asyncio multicallables: what a stub holds, one per method.

Each resolves its method's policy once and, per call, makes the logical call
(``grpclb.aio.calls``); with client interceptors, it makes grpc.aio's own
intercepted call whose chain ends in that logical call, so interceptors see
one call per logical call, retries and hedges inside (``grpclb._grpcio``).
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Any

import grpc
import grpc.aio

from grpclb._grpcio import intercepted_call, interceptors_of
from grpclb.aio.responses import (
    StreamStreamCall,
    StreamUnaryCall,
    UnaryStreamCall,
    UnaryUnaryCall,
)
from grpclb.core.attempt import Attempt

if TYPE_CHECKING:
    from grpclb.aio.channel import Channel


class _MultiCallable:
    _kind = ""  # the grpc.aio.Channel factory a pod's multicallable comes from
    _request_stream = False

    def __init__(
        self,
        channel: Channel,
        method: str,
        serializer: Any,
        deserializer: Any,
        registered: bool,
    ) -> None:
        self._channel = channel
        self._method = method
        self._key = (self._kind, method, serializer, deserializer, registered)
        self.policy = channel._policy_for(method, self._request_stream)
        self._interceptors = interceptors_of(self._kind, channel._interceptors)

    def _logical(self, request: Any, kwargs: dict[str, Any]) -> Any:  # pragma: no cover
        raise NotImplementedError

    def _start(self, request: Any, kwargs: dict[str, Any]) -> Any:
        """The logical call; with interceptors, wrapped in them once (not per attempt)."""
        if not self._interceptors:
            return self._logical(request, kwargs)
        return intercepted_call(
            self._kind,
            self._interceptors,
            functools.partial(self._after_interceptors, kwargs.get("compression")),
            request,
            self._method,
            kwargs.get("timeout"),
            kwargs.get("metadata"),
            kwargs.get("credentials"),
            kwargs.get("wait_for_ready"),
            self._channel._ensure_started(),
        )

    def _after_interceptors(self, compression: Any, details: Any, request: Any) -> Any:
        """The end of the interceptor chain: the logical call, as the interceptors left it."""
        method = details.method
        method = method.decode() if isinstance(method, bytes) else str(method)
        owner = self
        if method != self._method:  # an interceptor changed the method
            _, _, serializer, deserializer, registered = self._key
            owner = type(self)(self._channel, method, serializer, deserializer, registered)
        kwargs = {
            "timeout": details.timeout,
            "metadata": details.metadata,
            "credentials": details.credentials,
            "wait_for_ready": details.wait_for_ready,
        }
        if compression is not None:
            kwargs["compression"] = compression
        return owner._logical(request, kwargs)

    def on(self, attempt: Attempt) -> Any:
        connection = attempt.connection
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

    def __call__(
        self,
        request: Any,
        *,
        timeout: float | None = None,
        metadata: Any = None,
        credentials: grpc.CallCredentials | None = None,
        wait_for_ready: bool | None = None,
        compression: grpc.Compression | None = None,
    ) -> Any:
        if not self._interceptors:  # the common case: no keyword dict, no detour
            return UnaryUnaryCall(
                self, request, timeout, metadata, credentials, wait_for_ready, compression
            )
        kwargs = {
            "timeout": timeout,
            "metadata": metadata,
            "credentials": credentials,
            "wait_for_ready": wait_for_ready,
            "compression": compression,
        }
        return self._start(request, kwargs)

    def _logical(self, request: Any, kwargs: dict[str, Any]) -> Any:
        return UnaryUnaryCall(self, request, **kwargs)


class UnaryStream(_MultiCallable, grpc.aio.UnaryStreamMultiCallable):  # type: ignore[misc]
    _kind = "unary_stream"

    def __call__(self, request: Any, **kwargs: Any) -> Any:
        return self._start(request, kwargs)

    def _logical(self, request: Any, kwargs: dict[str, Any]) -> Any:
        return UnaryStreamCall(self, request, **kwargs)


class StreamUnary(_MultiCallable, grpc.aio.StreamUnaryMultiCallable):  # type: ignore[misc]
    _kind = "stream_unary"
    _request_stream = True

    def __call__(self, request_iterator: Any = None, **kwargs: Any) -> Any:
        return self._start(request_iterator, kwargs)

    def _logical(self, request: Any, kwargs: dict[str, Any]) -> Any:
        return StreamUnaryCall(self, request, **kwargs)


class StreamStream(_MultiCallable, grpc.aio.StreamStreamMultiCallable):  # type: ignore[misc]
    _kind = "stream_stream"
    _request_stream = True

    def __call__(self, request_iterator: Any = None, **kwargs: Any) -> Any:
        return self._start(request_iterator, kwargs)

    def _logical(self, request: Any, kwargs: dict[str, Any]) -> Any:
        return StreamStreamCall(self, request, **kwargs)
