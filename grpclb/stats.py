"""Snapshots of a channel's state: plain, immutable values, like Envoy's admin ``/clusters``.

Built under the balancer's lock from its live objects and then handed out, so
a caller can keep, compare and print them without racing the call path.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import grpc

from grpclb.core.endpoints import CONNECTING, IDLE, READY, TRANSIENT_FAILURE, Endpoint
from grpclb.core.health import UNHEALTHY

if TYPE_CHECKING:
    from grpclb.core.balancer import Balancer


@dataclass(frozen=True)
class EndpointStats:
    """A snapshot of one pod, like a row of Envoy's admin ``/clusters``."""

    address: str
    state: str
    """ready, connecting, idle, transient_failure or shutdown (its connection's state);
    ejected (out of rotation by outlier detection); unhealthy (out of rotation by its
    health check); draining (gone from DNS, finishing its calls)."""
    in_flight: int
    calls: int
    failures: int
    ejections: int
    connection_age: float | None
    connection_requests: int
    connections_opened: int
    health: str = "disabled"
    """The gRFC A17 health check of the active connection: disabled (health_check off),
    pending (no answer yet), serving, not_serving, service_unknown, unknown, or
    unimplemented (no health service: kept in rotation)."""
    weight: float = 1.0
    """Slow start: the pod's share of a full weight, below 1.0 while it ramps up."""


@dataclass(frozen=True)
class ChannelStats:
    """A snapshot of the whole channel."""

    target: str
    policy: str
    endpoints: tuple[EndpointStats, ...]
    in_flight: int
    calls: int
    failures: int
    panic: bool
    resolutions: int
    resolution_failures: int
    last_resolution_error: str
    retries: int
    retries_refused: int
    circuit_breaker_refusals: int
    update_failures: int = 0
    """DNS answers that could not be applied (the previous pods kept serving)."""
    resolved_pods: int = 0
    """Pods in the last DNS answer: more than ``endpoints`` when ``subset_size`` is set."""

    def __iter__(self) -> Iterator[EndpointStats]:
        return iter(self.endpoints)

    def __len__(self) -> int:
        return len(self.endpoints)

    def by_address(self) -> dict[str, EndpointStats]:
        """One row per address: a pod back in DNS while its old connection still drains
        has two rows, and the live one (listed first) is the one kept."""
        return {e.address: e for e in reversed(self.endpoints)}


def endpoint_state(endpoint: Endpoint) -> str:
    if endpoint.removed:
        return "draining"
    if endpoint.outlier.ejected:
        return "ejected"
    if endpoint.health in UNHEALTHY:
        return "unhealthy"
    return str(endpoint.state.name.lower())


def endpoint_rows(
    endpoints: Iterable[Endpoint],
    now: float,
    weight: Callable[[Endpoint, float], float] | None = None,
) -> tuple[EndpointStats, ...]:
    """One row per pod; call with the balancer's lock held. ``weight``: slow start's."""
    rows = []
    for endpoint in endpoints:
        active = endpoint.connection
        rows.append(
            EndpointStats(
                address=endpoint.address,
                state=endpoint_state(endpoint),
                in_flight=endpoint.in_flight,
                calls=endpoint.calls,
                failures=endpoint.failures,
                ejections=endpoint.outlier.ejections,
                connection_age=None if active is None else now - active.opened_at,
                connection_requests=0 if active is None else active.requests,
                connections_opened=endpoint.connections_opened,
                health=endpoint.health,
                weight=1.0 if weight is None or endpoint.removed else weight(endpoint, now),
            )
        )
    return tuple(rows)


def channel_stats(balancer: Balancer, endpoints: tuple[EndpointStats, ...]) -> ChannelStats:
    c = balancer.counters
    return ChannelStats(
        target=balancer.target.text,
        policy=balancer.settings.policy,
        endpoints=endpoints,
        in_flight=sum(e.in_flight for e in endpoints),
        calls=c["calls"],
        failures=c["failures"],
        panic=balancer.panic,
        resolutions=c["resolutions"],
        resolution_failures=c["resolution_failures"],
        last_resolution_error=balancer.last_resolution_error,
        retries=c["retries"],
        retries_refused=c["retries_refused"],
        circuit_breaker_refusals=c["circuit_breaker_refusals"],
        update_failures=c["update_failures"],
        resolved_pods=balancer.resolved_pods,
    )


def best_state(states: Iterable[grpc.ChannelConnectivity]) -> grpc.ChannelConnectivity:
    """A channel over several pods is as connected as its best pod (grpcio's rule)."""
    present = set(states)
    for state in (READY, CONNECTING, TRANSIENT_FAILURE):
        if state in present:
            return state
    return IDLE


def summary_line(stats: ChannelStats) -> str:
    """``repr`` of a channel: its pods by state, in one line."""
    states: dict[str, int] = {}
    for row in stats.endpoints:
        states[row.state] = states.get(row.state, 0) + 1
    summary = ", ".join(f"{n} {s}" for s, n in sorted(states.items())) or "no endpoints"
    return (
        f"<grpclb {stats.target!r} {stats.policy} [{summary}] "
        f"in_flight={stats.in_flight} calls={stats.calls}>"
    )


def check_min_ready(min_ready: int | None) -> None:
    """``wait_for_endpoints``' argument: a positive count, or None for every pod."""
    if min_ready is not None and (
        isinstance(min_ready, bool) or not isinstance(min_ready, int) or min_ready < 1
    ):
        raise ValueError(
            f"min_ready must be a whole number of pods >= 1, or None for every pod in the "
            f"current DNS answer; got {min_ready!r}"
        )


_NOT_AWAITED = frozenset({"draining", "ejected", "unhealthy"})


def enough_ready(stats: ChannelStats, min_ready: int | None) -> bool:
    """Whether ``wait_for_endpoints`` may return.

    ``min_ready=None`` asks for every pod of the current DNS answer (at least
    one): draining pods left the answer, and ejected or unhealthy ones are out
    of rotation until their ejection time ends or their health check says
    SERVING, so none of these is waited for.
    """
    ready = sum(1 for row in stats.endpoints if row.state == "ready")
    if min_ready is not None:
        return ready >= min_ready
    wanted = [row for row in stats.endpoints if row.state not in _NOT_AWAITED]
    return bool(wanted) and ready >= len(wanted)


def not_ready_error(stats: ChannelStats, min_ready: int | None, timeout: float) -> TimeoutError:
    """The error ``wait_for_endpoints`` raises when its timeout runs out, saying what it saw."""
    wanted = "every pod" if min_ready is None else f"{min_ready} ready pod(s)"
    seen = ", ".join(f"{row.address} {row.state}" for row in stats.endpoints) or "no pods"
    if stats.resolutions == 0:
        seen += "; DNS has not answered yet"
    elif stats.last_resolution_error:
        seen += f"; last DNS error: {stats.last_resolution_error}"
    return TimeoutError(f"grpclb {stats.target}: {wanted} not ready after {timeout}s ({seen})")
