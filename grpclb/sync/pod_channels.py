"""A pod's own grpcio channel: its multicallables, its fallback watch, its close.

grpcio documents method registration as not thread-safe, and registering a
method on a closed channel crashes the process; so registration and the start
of a close take one lock, and a closed connection refuses registration.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

import grpc

from grpclb.core.endpoints import Connection
from grpclb.sync.attempts import connection_closed
from grpclb.sync.connectivity import MONITOR, Watch

log = logging.getLogger("grpclb")
# Held while a pod's multicallable is registered and while a pod channel starts closing:
# grpcio documents registration as not thread-safe, and on a closed channel it crashes.
REGISTRATION_LOCK = threading.Lock()


def multicallable(connection: Connection, key: tuple[Any, ...]) -> Any:
    """A pod's multicallable, created once under the registration lock.

    A function rather than a method, so the health watch's thread can register
    its Watch method without holding the channel.
    """
    with REGISTRATION_LOCK:
        if connection.closing:
            # Registering a method on a closed grpcio channel crashes the process.
            raise connection_closed(connection)
        found = connection.multicallables.get(key)
        if found is None:
            kind, method, serializer, deserializer, registered = key
            factory = getattr(connection.channel, kind)
            found = factory(method, serializer, deserializer, _registered_method=registered)
            connection.multicallables[key] = found
        return found


def close_pod_channel(connection: Connection) -> None:
    """Close one pod's grpcio channel, its watch and its health check first."""
    channel = connection.channel
    if channel is None:
        return
    with REGISTRATION_LOCK:  # no method registration may race the close
        connection.closing = True
    if connection.health_watch is not None:
        connection.health_watch.stop()
    watcher = connection.watcher
    if isinstance(watcher, Watch):
        MONITOR.unwatch(watcher)  # unwatch before close; nothing is pending in grpcio
    elif watcher is not None:  # pragma: no cover - grpcio changed
        watcher.cancel()
    channel.close()


def close_all(connections: list[Connection]) -> None:
    for connection in connections:
        try:
            close_pod_channel(connection)
        except Exception:  # one failed close must not leave the others open
            log.exception("grpclb: closing %r failed", connection)


def ignore_state(state: grpc.ChannelConnectivity) -> None:
    """A no-op subscriber whose only purpose is try_to_connect."""


class Subscription:  # pragma: no cover - only when grpcio hides its core channel
    """The public way to watch a pod channel: grpcio's ``subscribe``, a polling thread each."""

    def __init__(
        self, channel: grpc.Channel, changed: Callable[[grpc.ChannelConnectivity], None]
    ) -> None:
        self._channel = channel
        self._delivered = threading.Event()

        def deliver(state: grpc.ChannelConnectivity) -> None:
            try:
                self._delivered.set()
                changed(state)
            except Exception:  # never let an exception reach grpcio's polling thread
                log.exception("grpclb: handling a connectivity change failed")

        self._deliver = deliver
        channel.subscribe(deliver, try_to_connect=True)

    def cancel(self) -> None:
        # grpcio's polling thread fails if the channel closes before its first check
        # (GRPCIO_NOTES); its first delivery proves that check is done.
        self._delivered.wait(timeout=2.0)
        self._channel.unsubscribe(self._deliver)
