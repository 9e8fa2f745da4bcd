"""What the balancer shows: the reads behind admission, connectivity, stats and metrics.

These are the balancer's methods (a mixin of ``Balancer``), kept apart from
the call path because none of them changes anything: each reads the pods
under the balancer's lock, or from the snapshot, for a caller that decides
(admission), reports (``Balancer.stats()``) or observes (metrics).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import grpc

from grpclb.core.endpoints import READY, SHUTDOWN, TRANSIENT_FAILURE, Endpoint
from grpclb.stats import EndpointStats, best_state, endpoint_rows

if TYPE_CHECKING:
    from grpclb.core.pickers import Picker
    from grpclb.core.slowstart import SlowStart


class BalancerViews:
    """Read-only views of the pods (a part of ``Balancer``)."""

    closed: bool
    counters: dict[str, int]
    _lock: threading.Lock
    _endpoints: dict[str, Endpoint]
    _members: list[Endpoint]
    _departed: list[Endpoint]
    _snapshot: tuple[Picker[Endpoint], Sequence[Endpoint]]
    _holding: bool
    _hosts_answer: bool
    _slow_start: SlowStart
    _clock: Callable[[], float]

    @property
    def has_endpoints(self) -> bool:
        return bool(self._snapshot[1])

    def admission_view(self, ready_only: bool = False) -> tuple[bool, bool]:
        """(DNS has answered at least once, there are pods to pick), read together.

        A call that found no pod asks this under the lock, so a first answer
        landing between its pick and its decision is seen whole, not half. While
        calls are held for a first READY pod (``_holds_calls_locked``) the answer
        counts as not yet in: calls wait, as they do for a first answer.
        ``ready_only``: only READY pods count (a wait_for_ready call's view).
        """
        with self._lock:
            answered = self.counters["resolutions"] > 0 and not self._holding
            usable = self._snapshot[1]
            has_pods = any(e.state is READY for e in usable) if ready_only else bool(usable)
            return answered, has_pods

    def _holds_calls_locked(self, candidates: Sequence[Endpoint]) -> bool:
        """Whether calls wait for a first READY pod rather than queue on a connecting one.

        A hosts-file answer lists one server's addresses (``localhost``: 127.0.0.1
        and ::1), of which only some may answer; a call handed to the one that
        refuses would fail. So until one of them is READY for the first time,
        calls wait in the channel, as gRPC queues calls while its picker is
        CONNECTING; once every address has failed, they fail as grpcio's would.
        """
        if not self._hosts_answer:
            return False
        if any(c.was_ready for e in self._endpoints.values() for c in e.connections()):
            return False  # past the first connection: the usual rule
        return any(e.state is not TRANSIENT_FAILURE for e in candidates)

    def aggregate_state(self) -> grpc.ChannelConnectivity:
        """The channel's state as grpcio would report it: the best of its pods'."""
        if self.closed:
            return SHUTDOWN
        return best_state(e.state for e in self._endpoints.values())

    def observe(self) -> list[tuple[str, str, int, bool]]:
        """(address, state, in_flight, connected) per pod, for metric observations."""
        with self._lock:
            ready = {a for a, e in self._endpoints.items() if e.state is READY}
        return [
            (s.address, s.state, s.in_flight, s.address in ready) for s in self.endpoint_stats()
        ]

    def endpoint_stats(self) -> tuple[EndpointStats, ...]:
        with self._lock:
            return endpoint_rows(
                [*self._members, *self._departed], self._clock(), self._slow_start.weight_of
            )
