"""A sync attempt's end: its pod released from grpcio's callback, and what it is charged.

grpcio calls a future's or a stream's callbacks on its own threads, and an
exception there can kill a polling thread and hang the channel, so these
never raise (GRPCIO_NOTES). A failure of the caller's own code (its request
iterator, its serializer) says nothing about the pod and is not charged.
"""

from __future__ import annotations

import logging
import weakref
from collections.abc import Callable
from typing import Any, TypeVar

import grpc

from grpclb.core.attempt import Attempt
from grpclb.core.endpoints import Connection
from grpclb.errors import LocalRpcError

log = logging.getLogger("grpclb")
T = TypeVar("T")


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


def call_outcome(call: Any) -> grpc.StatusCode | None:
    """A finished grpcio call's status as charged to its pod (None: a cancel, or unknown)."""
    try:
        if call.cancelled():
            return None
        return pod_outcome(call.code(), call.details)
    except Exception:
        return None


def connection_closed(connection: Connection) -> LocalRpcError:
    """A call counted on a connection that closed before the call was sent."""
    return LocalRpcError(
        grpc.StatusCode.UNAVAILABLE,
        f"grpclb: the connection to {connection.endpoint.address} closed before the call was sent",
    )


Then = Callable[[Any, "grpc.StatusCode | None"], None]  # (the ended call, its pod's status)


def release_when_done(attempt: Attempt, call: Any, then: Then | None = None) -> None:
    """Release a future's or stream's attempt when its call ends in any way; then ``then``.

    Registered with ``add_callback`` and holding the call only weakly:
    ``add_done_callback`` would bind the call to the callback and keep a call
    the caller abandoned alive, never cancelled. A dead reference means the
    call was collected (grpcio cancels it then): the attempt is still released,
    and ``then`` is not called. It never raises: an exception here can kill
    grpcio's polling thread and hang the channel.
    """
    call_ref = weakref.ref(call)

    def ended() -> None:
        try:
            finished = call_ref()
            code = None if finished is None else call_outcome(finished)
            attempt.release(code)
            if then is not None and finished is not None:
                then(finished, code)
        except Exception:  # pragma: no cover - defensive, see docstring
            log.exception("grpclb: handling an attempt's end failed")

    if not call.add_callback(ended):
        ended()  # it ended already


def weakly(owner: T, method: Callable[[T, Any, grpc.StatusCode | None], None]) -> Then:
    """``method`` bound to ``owner`` weakly: a stand-in its caller dropped is collected."""
    owner_ref = weakref.ref(owner)

    def call(finished: Any, code: grpc.StatusCode | None) -> None:
        target = owner_ref()
        if target is not None:
            method(target, finished, code)

    return call
