"""Connection lifecycle: open, recycle make-before-break, drain, close.

A pod's connection is replaced when it reaches ``max_connection_age`` (with
jitter) or ``max_requests_per_connection``: the replacement connects in the
background and takes over only once READY; the old one stops taking calls and
closes when its last call ends, or when ``max_connection_age_grace`` runs out.
A pod that leaves DNS drains the same way.

These are the balancer's methods (a mixin of ``Balancer``), kept apart because
they are one idea; every method here expects the balancer's lock held.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable
from typing import TYPE_CHECKING

from grpclb.config.settings import Settings
from grpclb.core.endpoints import Connection, Endpoint, Transport

if TYPE_CHECKING:
    from grpclb.config.target import Target
    from grpclb.telemetry import Telemetry

log = logging.getLogger("grpclb")
_Action = Callable[[], None]


class ConnectionLifecycle:
    """Opening, replacing, draining and closing pods' connections (lock held)."""

    target: Target
    settings: Settings
    telemetry: Telemetry
    counters: dict[str, int]
    _transport: Transport
    _clock: Callable[[], float]
    _rng: random.Random
    _endpoints: dict[str, Endpoint]
    _departed: list[Endpoint]

    # Provided by Balancer:
    _request_resolution_locked: Callable[[], None]
    _rebuild_locked: Callable[[], None]
    initial_health: Callable[[], str]

    def _remove_locked(self, endpoint: Endpoint, actions: list[_Action]) -> None:
        endpoint.removed = True
        now = self._clock()
        for connection in (endpoint.connection, endpoint.replacement):
            if connection is not None:
                connection.draining_since = now
                endpoint.draining.append(connection)
        endpoint.connection = endpoint.replacement = None
        self._departed.append(endpoint)
        for connection in list(endpoint.draining):
            self._close_if_drained_locked(connection, actions)

    def _open_locked(self, endpoint: Endpoint, actions: list[_Action]) -> Connection:
        now = self._clock()
        age = self.settings.max_connection_age
        expires_at = None
        if age is not None:
            jitter = self.settings.max_connection_age_jitter
            expires_at = now + age * (1.0 + self._rng.uniform(-jitter, jitter))
        connection = Connection(endpoint, None, now, expires_at)
        connection.health = self.initial_health()  # gRFC A17: pending until it answers
        # Pickable as soon as the lock is released, so the channel must exist by then.
        connection.channel = self._transport.dial(connection)
        endpoint.connections_opened += 1
        actions.append(lambda: self._transport.watch(connection))
        return connection

    def _recycle_locked(self, endpoint: Endpoint, actions: list[_Action]) -> None:
        """Make before break: open a replacement; the old one serves until it is ready."""
        if endpoint.replacement is None and not endpoint.removed:
            endpoint.replacement = self._open_locked(endpoint, actions)

    def _promote_locked(self, endpoint: Endpoint, actions: list[_Action]) -> None:
        old, endpoint.connection, endpoint.replacement = (
            endpoint.connection,
            endpoint.replacement,
            None,
        )
        self.counters["recycles"] += 1
        self.telemetry.recycled(endpoint.address, len(self._endpoints))
        log.debug("grpclb %s: connection to %s recycled", self.target.text, endpoint.address)
        self._request_resolution_locked()  # recycling is also a chance to notice new pods
        if old is not None:
            old.draining_since = self._clock()
            endpoint.draining.append(old)
            self._close_if_drained_locked(old, actions)
        self._rebuild_locked()

    def _close_if_drained_locked(self, connection: Connection, actions: list[_Action]) -> None:
        if connection.in_flight == 0 and not connection.closing:
            self._close_locked(connection, actions)

    def _close_locked(self, connection: Connection, actions: list[_Action]) -> None:
        connection.closing = True
        endpoint = connection.endpoint
        if connection in endpoint.draining:
            endpoint.draining.remove(connection)
        if endpoint.removed and not endpoint.draining and endpoint in self._departed:
            self._departed.remove(endpoint)
        actions.append(lambda: self._transport.close_connection(connection))

    def _age_connections_locked(self, now: float, actions: list[_Action]) -> list[float]:
        """Recycle connections past their age, close drains past their grace; when next."""
        due = []
        for endpoint in self._endpoints.values():
            active = endpoint.connection
            if active is not None and active.expires_at is not None:
                if now >= active.expires_at:
                    self._recycle_locked(endpoint, actions)
                else:
                    due.append(active.expires_at)
        grace = self.settings.max_connection_age_grace
        for endpoint in [*self._endpoints.values(), *self._departed]:
            for connection in list(endpoint.draining):
                if grace is not None and connection.draining_since is not None:
                    if now >= connection.draining_since + grace:
                        self._close_locked(connection, actions)
                    else:
                        due.append(connection.draining_since + grace)
        return due
