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

import functools
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from grpclb.core.endpoints import Connection, Endpoint, Transport

if TYPE_CHECKING:
    from grpclb.config.target import Target
    from grpclb.core.balancer import Balancer

log = logging.getLogger("grpclb")
_Action = Callable[[], None]


class AtomicAnswers:
    """The balancer's way of applying an answer (a mixin of ``Balancer``; lock held)."""

    target: Target
    counters: dict[str, int]
    last_update_error: str
    _transport: Transport
    _endpoints: dict[str, Endpoint]

    # Provided by Balancer:
    _apply_addresses_locked: Callable[[set[str], list[_Action]], None]

    def _apply_answer_locked(self, wanted: set[str], actions: list[_Action]) -> None:
        """Apply an answer whole, or leave the previous pods serving.

        grpcio may refuse to create a pod's channel, or a hash table may not fit in
        memory; half an answer would leave pods listed and no picker, for good.
        """
        rollback = Rollback.capture(self)  # type: ignore[arg-type]
        staged: list[_Action] = []
        try:
            self._apply_addresses_locked(wanted, staged)
        except Exception as exc:
            close = self._transport.close_connection
            opened = rollback.restore(self)  # type: ignore[arg-type]
            actions.extend(functools.partial(close, c) for c in opened)
            self.counters["update_failures"] += 1
            error = f"{type(exc).__name__}: {exc}"
            # Once per distinct error: the same answer is tried again at every refresh.
            (log.debug if error == self.last_update_error else log.error)(
                "grpclb %s: applying a DNS answer of %d pods failed (%s); keeping the "
                "previous %d pods",
                self.target.text,
                len(wanted),
                error,
                len(self._endpoints),
                exc_info=error != self.last_update_error,
            )
            self.last_update_error = error
            return
        if self.last_update_error:
            log.info("grpclb %s: DNS answers apply again", self.target.text)
            self.last_update_error = ""
        actions.extend(staged)


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
    FIELDS = (
        "_endpoints",
        "_departed",
        "_records",
        "_members",
        "_snapshot",
        "_stale",
        "_any_ready",
        "panic",
        "_holding",
        "resolved_pods",
    )

    @classmethod
    def capture(cls, balancer: Balancer) -> Rollback:
        saved = cls({name: _copy(getattr(balancer, name)) for name in cls.FIELDS})
        # The picker factory's slots and table follow membership: saved whole.
        saved.balancer_fields["_pickers.__dict__"] = {
            k: _copy(v) for k, v in vars(balancer._pickers).items()
        }
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
            if name == "_pickers.__dict__":
                vars(balancer._pickers).update(value)
            else:
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
