"""Applying a DNS answer whole or not at all.

Applying an answer dials new pods (grpcio may refuse to create a channel) and
rebuilds the picker (a hash table may not fit in memory). A failure half way
used to leave the balancer with pods listed but no picker: every call failed
"no endpoints found" for good. ``Rollback`` records what applying an answer may
change, so that on failure the balancer is put back exactly as it was, still
serving its previous pods, and the channels dialled for the failed answer are
closed.

Everything here runs with the balancer's lock held. State that
``Balancer._apply_addresses_locked`` comes to change must be recorded here too.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from grpclb.core.endpoints import Connection, Endpoint

if TYPE_CHECKING:
    from grpclb.core.balancer import Balancer


@dataclass
class _EndpointState:
    endpoint: Endpoint
    removed: bool
    connection: Connection | None
    replacement: Connection | None
    draining: list[Connection]
    connections_opened: int


@dataclass
class _ConnectionState:
    connection: Connection
    draining_since: float | None
    closing: bool


@dataclass
class Rollback:
    """What an answer's application may change, as it was before (lock held)."""

    balancer_fields: dict[str, Any]
    endpoints: list[_EndpointState] = field(default_factory=list)
    connections: list[_ConnectionState] = field(default_factory=list)

    # The balancer's own fields an answer replaces or mutates in place.
    FIELDS = ("_endpoints", "_departed", "_records", "_snapshot", "panic")

    @classmethod
    def capture(cls, balancer: Balancer) -> Rollback:
        saved = cls({name: _copy(getattr(balancer, name)) for name in cls.FIELDS})
        for endpoint in [*balancer._endpoints.values(), *balancer._departed]:
            saved.endpoints.append(
                _EndpointState(
                    endpoint,
                    endpoint.removed,
                    endpoint.connection,
                    endpoint.replacement,
                    list(endpoint.draining),
                    endpoint.connections_opened,
                )
            )
            for connection in endpoint.connections():
                saved.connections.append(
                    _ConnectionState(connection, connection.draining_since, connection.closing)
                )
        return saved

    def restore(self, balancer: Balancer) -> list[Connection]:
        """Put everything back; return the connections dialled since, for closing."""
        known = {id(s.connection) for s in self.connections}
        dialled = [
            c
            for e in [*balancer._endpoints.values(), *balancer._departed]
            for c in e.connections()
            if id(c) not in known and c.channel is not None
        ]
        for connection in dialled:
            connection.closing = True  # never pickable: its endpoint is forgotten below
        for name, value in self.balancer_fields.items():
            setattr(balancer, name, value)
        for s in self.endpoints:
            e = s.endpoint
            e.removed, e.connection, e.replacement = s.removed, s.connection, s.replacement
            e.draining[:] = s.draining
            e.connections_opened = s.connections_opened
        for c in self.connections:
            c.connection.draining_since, c.connection.closing = c.draining_since, c.closing
        return dialled


def _copy(value: Any) -> Any:
    """A shallow copy of a container, so in-place changes do not reach the saved one."""
    if isinstance(value, dict):
        return dict(value)
    if isinstance(value, list):
        return list(value)
    return value  # immutable: tuples, bools
