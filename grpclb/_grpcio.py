"""Every use of grpcio's private API, in one place.

grpcio's public API cannot do three things a balancing channel needs: read a
finished grpc.aio call's status without awaiting, ask an IDLE sync channel to
connect without leaving work for its polling thread, and learn a sync
channel's connectivity without a polling thread per channel. Each helper here
degrades to the public API (or to None) when grpcio's internals change, and
``tests/unit/test_grpcio_private.py`` fails loudly when they do, so an upgrade
is noticed in CI rather than in production.
"""

from __future__ import annotations

from typing import Any

import grpc
from grpc import _common as grpc_common

_STATUS_CODES: dict[Any, grpc.StatusCode] = grpc_common.CYGRPC_STATUS_CODE_TO_STATUS_CODE


def aio_finished_status(call: Any) -> grpc.StatusCode | None:
    """A finished grpc.aio call's status without awaiting ``code()``; None when hidden.

    grpc.aio's ``code()`` is a coroutine even for a finished call; reading the
    Cython call's status keeps a done-callback synchronous. Interceptors wrap
    the call and hide it: then None, and the caller awaits the public way.
    """
    try:
        return _STATUS_CODES[call._cython_call._status.code()]
    except Exception:
        return None


def core_channel(channel: grpc.Channel) -> Any:
    """The Cython channel under a sync ``grpc.Channel``, or None."""
    return getattr(channel, "_channel", None)


def request_connection(channel: grpc.Channel) -> bool:
    """Ask an IDLE sync channel to connect; False when the private hook is missing.

    ``subscribe(try_to_connect=True)`` leaves a flag that grpcio's polling
    thread acts on later, possibly after the channel closed; the core
    channel's ``check_connectivity_state(True)`` has no such after-effect.
    """
    core = core_channel(channel)
    if core is None:
        return False
    core.check_connectivity_state(True)
    return True
