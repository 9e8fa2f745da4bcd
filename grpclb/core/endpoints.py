"""Pods and their connections: the mutable state that outlives any picker.

Pickers are rebuilt whenever the usable set changes, but in-flight counts,
call counters and connections belong to the pod, so they live here and every
picker holds references to these objects (as grpc-go's balancers do).

All mutation happens under the balancer's lock; pickers read ``in_flight``
without it, which is fine for a load estimate.
"""

from __future__ import annotations

import itertools
from typing import Any, Protocol

from grpc import ChannelConnectivity as State

_connection_ids = itertools.count(1)

READY = State.READY
IDLE = State.IDLE
CONNECTING = State.CONNECTING
TRANSIENT_FAILURE = State.TRANSIENT_FAILURE
SHUTDOWN = State.SHUTDOWN


class Connection:
    """One real grpcio channel (sync or asyncio) to one pod.

    A pod may briefly have several: the active one, a replacement connecting
    in the background, and old ones draining their last calls.
    """

    __slots__ = (
        "channel",
        "closing",
        "draining_since",
        "endpoint",
        "expires_at",
        "health",
        "health_watch",
        "id",
        "in_flight",
        "multicallables",
        "opened_at",
        "requests",
        "state",
        "was_ready",
        "watcher",
    )

    def __init__(
        self, endpoint: Endpoint, channel: Any, opened_at: float, expires_at: float | None
    ):
        self.id = next(_connection_ids)
        self.endpoint = endpoint
        self.channel = channel
        self.state = IDLE
        self.was_ready = False
        self.in_flight = 0
        self.requests = 0
        self.opened_at = opened_at
        self.expires_at = expires_at
        self.draining_since: float | None = None
        self.closing = False
        # (kind, method, serializer, deserializer) -> grpcio multicallable; see call paths.
        self.multicallables: dict[tuple[Any, ...], Any] = {}
        self.watcher: Any = None  # the flavour's connectivity subscription
        # gRFC A17 health of this connection (grpclb.core.health states), and the
        # flavour's Watch stream handle; "disabled" while health checking is off.
        self.health = "disabled"
        self.health_watch: Any = None

    def __repr__(self) -> str:
        role = "draining" if self.draining_since is not None else "active"
        return (
            f"<Connection #{self.id} {self.endpoint.address} {self.state.name} {role} "
            f"in_flight={self.in_flight} requests={self.requests}>"
        )


class Endpoint:
    """One pod: an address, its connections and its counters."""

    __slots__ = (
        "address",
        "calls",
        "connection",
        "connections_opened",
        "draining",
        "failures",
        "health_warned",
        "in_flight",
        "outlier",
        "ramp_from",
        "removed",
        "replacement",
    )

    def __init__(self, address: str) -> None:
        self.address = address
        self.connection: Connection | None = None
        self.replacement: Connection | None = None
        self.draining: list[Connection] = []
        self.in_flight = 0
        self.calls = 0
        self.failures = 0
        self.connections_opened = 0
        self.removed = False
        self.outlier: Any = None  # the outlier detector's per-pod record
        self.health_warned = False  # "no health service" is logged once per pod
        # Slow start: when this pod's weight began ramping up (None: full weight).
        self.ramp_from: float | None = None

    @property
    def state(self) -> State:
        return self.connection.state if self.connection is not None else SHUTDOWN

    @property
    def health(self) -> str:
        """The health of the active connection (grpclb.core.health states)."""
        return self.connection.health if self.connection is not None else "disabled"

    def connections(self) -> list[Connection]:
        current = [c for c in (self.connection, self.replacement) if c is not None]
        return current + self.draining

    def __repr__(self) -> str:
        return (
            f"<Endpoint {self.address} {self.state.name} in_flight={self.in_flight} "
            f"calls={self.calls} failures={self.failures}>"
        )


class Transport(Protocol):
    """The I/O one flavour (sync or asyncio) performs for the core."""

    def dial(self, connection: Connection) -> Any:
        """A new channel object to the connection's pod; no I/O, no threads yet."""

    def watch(self, connection: Connection) -> None:
        """Start watching (and so connecting) the connection's channel."""

    def connect(self, connection: Connection) -> None:
        """Ask an IDLE channel to connect (grpcio never does so on its own)."""

    def close_connection(self, connection: Connection) -> None:
        """Close the channel soon, from a context where closing cannot deadlock."""

    def wake(self) -> None:
        """Something changed: picker, deadlines or a wish to re-resolve."""
