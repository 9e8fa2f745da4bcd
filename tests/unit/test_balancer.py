"""The balancer core on simulated time, with a recording transport and no sockets.

The core does no I/O: it hands ``open``/``connect``/``close_connection``/``wake``
to its transport, so a fake that records them shows exactly what a real flavour
would be asked to do. Connectivity is driven by hand with
``connectivity_changed`` and time with a fake clock; the timer a flavour runs is
simulated by calling ``maintain()`` at the times it asks for.
"""

from __future__ import annotations

import contextlib
import random
import threading
from collections import Counter
from collections.abc import Iterable

import grpc
import pytest

from grpclb.config.settings import Settings
from grpclb.config.target import parse_target
from grpclb.core.attempt import Attempt
from grpclb.core.balancer import Balancer
from grpclb.core.endpoints import Connection, Endpoint
from grpclb.core.hashing import hash_key
from grpclb.errors import LocalRpcError
from grpclb.resolver import Resolution
from grpclb.stats import EndpointStats

S = grpc.ChannelConnectivity
C = grpc.StatusCode
TARGET = "dns:///svc.test:9000"
A, B, CC, D, E = (f"10.0.0.{i}:9000" for i in range(1, 6))
T0 = 1000.0


class FakeClock:
    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class FakeTransport:
    """Records the I/O the core asks for.

    ``opened`` lists every connection the core created, in order, whether it
    asked for it with ``open`` or with ``dial`` (then ``watch``).
    """

    def __init__(self) -> None:
        self.opened: list[Connection] = []
        self.watched: list[Connection] = []
        self.connected: list[Connection] = []
        self.closed: list[Connection] = []
        self.wakes = 0

    def open(self, connection: Connection) -> None:
        connection.channel = object()
        self.opened.append(connection)

    def dial(self, connection: Connection) -> object:
        self.opened.append(connection)
        return object()

    def watch(self, connection: Connection) -> None:
        self.watched.append(connection)

    def connect(self, connection: Connection) -> None:
        self.connected.append(connection)

    def close_connection(self, connection: Connection) -> None:
        self.closed.append(connection)

    def wake(self) -> None:
        self.wakes += 1

    def of(self, address: str) -> list[Connection]:
        return [c for c in self.opened if c.endpoint.address == address]


class FixedJitter(random.Random):
    """A seeded Random whose ``uniform`` returns a fixed point of its range (0 low, 1 high)."""

    def __init__(self, fraction: float) -> None:
        super().__init__(1)
        self.fraction = fraction

    def uniform(self, a: float, b: float) -> float:
        return a + (b - a) * self.fraction


class Harness:
    def __init__(self, rng: random.Random | None = None, **overrides: object) -> None:
        self.clock = FakeClock()
        self.transport = FakeTransport()
        self.settings = Settings.load(overrides, environ={})
        self.balancer = Balancer(
            parse_target(TARGET),
            self.settings,
            self.transport,
            clock=self.clock,
            rng=rng or random.Random(7),
        )

    # resolution and connectivity

    def resolve(self, *addresses: str) -> None:
        self.balancer.update(Resolution(tuple(sorted(addresses))))

    def endpoint(self, address: str) -> Endpoint:
        found = [
            c.endpoint
            for c in self.transport.of(address)
            if not c.endpoint.removed and c.endpoint.connection is not None
        ]
        assert found, f"no live endpoint for {address}"
        return found[-1]

    def active(self, address: str) -> Connection:
        connection = self.endpoint(address).connection
        assert connection is not None
        return connection

    def set_state(self, address: str, state: S) -> None:
        self.balancer.connectivity_changed(self.active(address), state)

    def ready(self, *addresses: str) -> None:
        for address in addresses:
            self.set_state(address, S.READY)

    # calls

    def call(
        self, request_hash: int | None = None, *, retry: bool = False, **kwargs: object
    ) -> Attempt:
        """A call; a retry first reserves its place in the retry budget, as the channel does."""
        if retry:
            assert self.balancer.reserve_retry()
        attempt = self.balancer.start_call(request_hash, retry=retry, **kwargs)  # type: ignore[arg-type]
        assert attempt is not None
        return attempt

    def picks(self, n: int, request_hash: int | None = None) -> list[str]:
        """Addresses of n calls, each finished OK at once."""
        out = []
        for _ in range(n):
            connection = self.call(request_hash)
            out.append(connection.endpoint.address)
            connection.release(C.OK)
        return out

    def call_on(self, address: str) -> Attempt:
        """A call that lands on address (every other live pod is avoided)."""
        others = {c.endpoint for c in self.transport.opened if c.endpoint.address != address}
        connection = self.call(avoid=others)
        assert connection.endpoint.address == address
        return connection

    def fail_on(self, address: str, n: int = 1, code: C = C.UNAVAILABLE) -> None:
        for _ in range(n):
            self.call_on(address).release(code)

    # time

    def run_timer(self, until: float) -> None:
        """Fire maintain() at every time it asks for, up to ``until``, as a flavour's timer."""
        due = self.balancer.maintain()
        while due <= until:
            self.clock.now = max(due, self.clock.now)
            due = self.balancer.maintain()
        self.clock.now = until
        self.balancer.maintain()

    # views

    def rows(self) -> dict[str, EndpointStats]:
        return {row.address: row for row in self.balancer.stats()}

    def states(self) -> dict[str, str]:
        return {row.address: row.state for row in self.balancer.stats()}


HASH_SETTINGS = {"hash_key": "x-user", "ring_points_per_endpoint": 64, "maglev_table_size": 251}
POLICY_SETTINGS = [
    {"policy": "round_robin"},
    {"policy": "least_request"},
    {"policy": "random"},
    {"policy": "pick_first"},
    {"policy": "ring_hash", **HASH_SETTINGS},
    {"policy": "maglev", **HASH_SETTINGS},
]
POLICY_IDS = [p["policy"] for p in POLICY_SETTINGS]


# --- resolution -----------------------------------------------------------------------


def test_resolution_adds_and_removes_endpoints() -> None:
    h = Harness(policy="round_robin")
    h.resolve(A, B)
    assert [c.endpoint.address for c in h.transport.opened] == [A, B]
    assert [row.address for row in h.balancer.stats()] == [A, B]
    h.ready(A, B)
    h.resolve(B, CC)
    assert [c.endpoint.address for c in h.transport.closed] == [A]  # nothing in flight
    assert [c.endpoint.address for c in h.transport.opened] == [A, B, CC]
    assert [row.address for row in h.balancer.stats()] == [B, CC]
    assert set(h.picks(10)) == {B}  # CC is not ready yet
    assert h.balancer.stats().resolutions == 2


def test_repeated_resolution_changes_nothing() -> None:
    h = Harness()
    h.resolve(A, B)
    h.resolve(A, B)
    assert len(h.transport.opened) == 2
    assert h.transport.closed == []


def test_failed_resolution_keeps_the_last_set() -> None:
    h = Harness(policy="round_robin")
    h.resolve(A, B)
    h.ready(A, B)
    h.balancer.update(Resolution(None, error="DNS lookup timed out"))
    stats = h.balancer.stats()
    assert [row.address for row in stats] == [A, B]
    assert (stats.resolutions, stats.resolution_failures) == (2, 1)
    assert stats.last_resolution_error == "DNS lookup timed out"
    assert h.transport.closed == []
    assert set(h.picks(4)) == {A, B}


def test_empty_resolution_empties_the_set_and_recovers() -> None:
    h = Harness()
    h.resolve(A, B)
    h.ready(A, B)
    h.balancer.update(Resolution((), error="no records"))
    assert len(h.balancer.stats()) == 0
    assert h.balancer.start_call(None) is None
    assert not h.balancer.has_endpoints
    assert {c.endpoint.address for c in h.transport.closed} == {A, B}
    assert h.balancer.stats().resolution_failures == 0
    h.resolve(CC)
    assert h.balancer.has_endpoints
    assert h.call().endpoint.address == CC


def test_no_resolution_yet_means_no_pod() -> None:
    h = Harness()
    assert h.balancer.start_call(None) is None
    assert not h.balancer.resolved_once


# --- which pods are picked ------------------------------------------------------------


@pytest.mark.parametrize("overrides", POLICY_SETTINGS, ids=POLICY_IDS)
def test_only_ready_pods_are_picked_while_any_is_ready(overrides: dict[str, object]) -> None:
    h = Harness(**overrides)
    h.resolve(A, B, CC)
    h.set_state(B, S.CONNECTING)
    h.ready(CC)
    assert set(h.picks(50)) == {CC}
    assert set(h.picks(50, request_hash=hash_key("user-1"))) == {CC}


@pytest.mark.parametrize("state", [S.IDLE, S.CONNECTING], ids=["idle", "connecting"])
@pytest.mark.parametrize(
    "overrides",
    [{"policy": "round_robin"}, {"policy": "least_request"}],
    ids=["round_robin", "least_request"],
)
def test_before_any_is_ready_calls_go_to_connecting_pods(
    overrides: dict[str, object], state: S
) -> None:
    h = Harness(**overrides)
    h.resolve(A, B)
    h.set_state(A, state)
    h.set_state(B, state)
    assert set(h.picks(40)) == {A, B}


@pytest.mark.parametrize("overrides", POLICY_SETTINGS, ids=POLICY_IDS)
def test_transient_failure_pod_is_skipped_at_once(overrides: dict[str, object]) -> None:
    h = Harness(**overrides)
    h.resolve(A, B)
    h.ready(A, B)
    h.set_state(A, S.TRANSIENT_FAILURE)
    assert set(h.picks(40)) == {B}
    assert set(h.picks(40, request_hash=hash_key("user-7"))) == {B}
    assert h.balancer.stats().failures == 0  # no ejection, no failed call needed


def test_transient_failure_is_skipped_before_any_is_ready() -> None:
    h = Harness(policy="round_robin")
    h.resolve(A, B)
    h.set_state(A, S.CONNECTING)
    h.set_state(B, S.CONNECTING)
    h.set_state(A, S.TRANSIENT_FAILURE)
    assert set(h.picks(20)) == {B}


def test_unchanged_resolution_keeps_round_robin_exact() -> None:
    h = Harness(policy="round_robin")
    h.resolve(A, B, CC, D, E)
    h.ready(A, B, CC, D, E)
    counts: Counter[str] = Counter()
    for i in range(1000):
        if i % 7 == 0:  # a DNS refresh with the same answer
            h.resolve(A, B, CC, D, E)
        counts.update(h.picks(1))
    assert counts == {A: 200, B: 200, CC: 200, D: 200, E: 200}


def test_round_robin_is_exact_between_changes() -> None:
    h = Harness(policy="round_robin")
    h.resolve(A, B, CC, D, E)
    h.ready(A, B, CC, D, E)
    assert Counter(h.picks(1000)) == {A: 200, B: 200, CC: 200, D: 200, E: 200}


def test_idle_connection_is_asked_to_connect() -> None:
    h = Harness()
    h.resolve(A)
    h.ready(A)
    h.set_state(A, S.IDLE)
    assert h.transport.connected == [h.active(A)]


def test_lost_connection_requests_a_resolution() -> None:
    h = Harness()
    h.resolve(A, B)
    h.ready(A, B)
    h.balancer.resolve_requested = False
    h.set_state(A, S.TRANSIENT_FAILURE)
    assert h.balancer.resolve_requested


def test_retry_goes_to_a_pod_not_yet_tried() -> None:
    h = Harness(policy="round_robin")
    h.resolve(A, B, CC)
    h.ready(A, B, CC)
    tried = {h.endpoint(A)}
    for _ in range(30):
        connection = h.call(avoid=tried, retry=True)
        assert connection.endpoint.address != A
        connection.release(C.OK)
    assert h.balancer.stats().retries == 30


# --- removal drains -------------------------------------------------------------------


def test_removed_pod_with_calls_in_flight_drains() -> None:
    h = Harness(policy="pick_first")
    h.resolve(A, B)
    h.ready(A, B)
    first, second = h.call(), h.call()
    assert first.endpoint.address == second.endpoint.address == A
    h.resolve(B)
    assert h.transport.closed == []
    row = h.rows()[A]
    assert (row.state, row.in_flight) == ("draining", 2)
    assert set(h.picks(10)) == {B}
    first.release(C.OK)
    assert h.transport.closed == []
    second.release(C.UNAVAILABLE)
    assert h.transport.closed == [first.connection]
    assert list(h.rows()) == [B]
    assert h.balancer.stats().in_flight == 0


def test_failures_on_a_draining_pod_never_eject_it() -> None:
    h = Harness(policy="pick_first", consecutive_failures=1)
    h.resolve(A, B)
    h.ready(A, B)
    calls = [h.call() for _ in range(3)]
    h.resolve(B)
    for connection in calls:
        connection.release(C.UNAVAILABLE)
    assert h.balancer.counters["ejections"] == 0
    assert h.balancer.stats().failures == 3


# --- counters -------------------------------------------------------------------------


def test_in_flight_calls_and_failures_counters() -> None:
    h = Harness(policy="pick_first")
    h.resolve(A, B)
    h.ready(A, B)
    ok, unavailable, not_found, cancelled, open_call = (h.call() for _ in range(5))
    assert h.balancer.stats().in_flight == 5
    ok.release(C.OK)
    unavailable.release(C.UNAVAILABLE)
    not_found.release(C.NOT_FOUND)  # an application error
    cancelled.release(None)  # no status
    stats = h.balancer.stats()
    assert (stats.in_flight, stats.calls, stats.failures) == (1, 5, 1)
    row_a, row_b = h.rows()[A], h.rows()[B]
    assert (row_a.in_flight, row_a.calls, row_a.failures) == (1, 5, 1)
    assert row_a.connection_requests == 5
    assert (row_b.in_flight, row_b.calls, row_b.failures) == (0, 0, 0)
    assert h.balancer.counters["calls"] == 5
    assert h.balancer.counters["failures"] == 1
    assert open_call.connection.in_flight == 1


@pytest.mark.parametrize(
    ("failure_codes", "code", "counted"),
    [
        (None, C.UNAVAILABLE, True),
        (None, C.DEADLINE_EXCEEDED, True),
        (None, C.INTERNAL, True),
        (None, C.UNKNOWN, True),
        (None, C.DATA_LOSS, True),
        (None, C.NOT_FOUND, False),
        (None, C.INVALID_ARGUMENT, False),
        (None, C.RESOURCE_EXHAUSTED, False),
        ("NOT_FOUND", C.NOT_FOUND, True),
        ("NOT_FOUND", C.UNAVAILABLE, False),
    ],
    ids=str,
)
def test_failure_codes(failure_codes: str | None, code: C, counted: bool) -> None:
    overrides = {} if failure_codes is None else {"failure_codes": failure_codes}
    h = Harness(**overrides)
    h.resolve(A)
    h.ready(A)
    h.call().release(code)
    assert h.balancer.stats().failures == int(counted)


# --- circuit breaker ------------------------------------------------------------------


def test_max_requests_circuit_breaker() -> None:
    h = Harness(max_requests=2)
    h.resolve(A)
    h.ready(A)
    first = h.call()
    h.call()
    with pytest.raises(LocalRpcError) as info:
        h.balancer.start_call(None)
    error = info.value
    assert isinstance(error, grpc.RpcError)
    assert error.code() is C.UNAVAILABLE
    assert "max_requests=2" in error.details()
    assert TARGET in error.details()
    stats = h.balancer.stats()
    assert (stats.circuit_breaker_refusals, stats.calls, stats.in_flight) == (1, 2, 2)
    first.release(C.OK)
    assert h.call().endpoint.address == A


def test_no_circuit_breaker_by_default() -> None:
    h = Harness()
    h.resolve(A)
    h.ready(A)
    for _ in range(2000):
        h.call()
    assert h.balancer.stats().in_flight == 2000


class BarrierRandom(random.Random):
    """random() waits for a partner thread while armed: both picks overlap."""

    def __init__(self) -> None:
        super().__init__(3)
        self.barrier: threading.Barrier | None = None

    def random(self) -> float:
        if self.barrier is not None:
            # A broken barrier means the picks did not overlap: nothing to prove, go on.
            with contextlib.suppress(threading.BrokenBarrierError):
                self.barrier.wait()
        return super().random()


def test_max_requests_holds_under_concurrency() -> None:
    rng = BarrierRandom()
    h = Harness(rng=rng, policy="random", max_requests=1)
    h.resolve(A)
    h.ready(A)
    rng.barrier = threading.Barrier(2, timeout=1.0)
    errors: list[BaseException] = []

    def one_call() -> None:
        try:
            h.balancer.start_call(None)
        except LocalRpcError:
            pass
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=one_call) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=5)
    assert not any(t.is_alive() for t in threads)
    assert errors == []
    assert h.balancer.stats().in_flight <= 1


# --- connection recycling -------------------------------------------------------------


def test_max_requests_per_connection_replaces_make_before_break() -> None:
    h = Harness(policy="pick_first", max_requests_per_connection=3)
    h.resolve(A)
    h.ready(A)
    old = h.active(A)
    calls = [h.call() for _ in range(3)]
    assert all(c.connection is old for c in calls)
    assert len(h.transport.of(A)) == 2  # the third call asked for a replacement
    new = h.transport.of(A)[-1]
    assert new is not old
    calls.append(h.call())  # the old one serves until the new one is ready
    assert calls[-1].connection is old
    assert len(h.transport.of(A)) == 2  # one replacement at a time
    h.balancer.resolve_requested = False
    h.balancer.connectivity_changed(new, S.CONNECTING)
    calls.append(h.call())
    assert calls[-1].connection is old
    h.balancer.connectivity_changed(new, S.READY)
    assert h.balancer.counters["recycles"] == 1
    assert h.balancer.resolve_requested  # recycling is a chance to notice new pods
    assert h.transport.closed == []  # old still has calls in flight
    assert old.draining_since == T0
    after = h.call()
    assert after.connection is new
    for connection in calls:
        connection.release(C.OK)
    assert h.transport.closed == [old]
    h.call().release(C.OK)  # the old call count does not leak into the new
    row = h.rows()[A]
    assert row.connections_opened == 2
    assert row.connection_requests == 2
    assert row.state == "ready"


def test_replacement_not_yet_ready_never_leaves_the_pod_without_a_connection() -> None:
    h = Harness(policy="pick_first", max_requests_per_connection=1)
    h.resolve(A)
    h.ready(A)
    old = h.active(A)
    h.call().release(C.OK)
    new = h.transport.of(A)[-1]
    h.balancer.connectivity_changed(new, S.TRANSIENT_FAILURE)
    for _ in range(5):
        connection = h.call()
        assert connection.connection is old
        connection.release(C.OK)
    assert h.transport.closed == []
    assert h.states() == {A: "ready"}


@pytest.mark.parametrize(
    ("fraction", "jitter", "lifetime"),
    [(0.0, 0.1, 90.0), (0.5, 0.1, 100.0), (1.0, 0.1, 110.0), (1.0, 0.0, 100.0), (0.0, 0.5, 50.0)],
    ids=["minus_10pc", "no_draw", "plus_10pc", "jitter_off", "minus_50pc"],
)
def test_max_connection_age_with_jitter(fraction: float, jitter: float, lifetime: float) -> None:
    h = Harness(
        rng=FixedJitter(fraction),
        policy="pick_first",
        max_connection_age=100,
        max_connection_age_jitter=jitter,
    )
    h.resolve(A)
    h.ready(A)
    old = h.active(A)
    assert old.expires_at == pytest.approx(T0 + lifetime)
    h.clock.now = T0 + lifetime - 0.01
    assert h.balancer.maintain() == pytest.approx(T0 + lifetime)
    assert len(h.transport.of(A)) == 1
    h.clock.now = T0 + lifetime
    h.balancer.maintain()
    assert len(h.transport.of(A)) == 2
    new = h.transport.of(A)[-1]
    assert new.expires_at == pytest.approx(T0 + 2 * lifetime)
    assert h.call().connection is old
    h.balancer.connectivity_changed(new, S.READY)
    assert h.transport.closed == []
    assert h.call().connection is new


def test_connection_age_jitter_spreads_the_fleet() -> None:
    h = Harness(rng=random.Random(11), max_connection_age="1m")
    addresses = [f"10.0.1.{i}:9000" for i in range(1, 41)]
    h.resolve(*addresses)
    ages = [c.expires_at - c.opened_at for c in h.transport.opened]  # type: ignore[operator]
    assert all(54.0 <= age <= 66.0 for age in ages)
    assert len(set(ages)) == len(ages)
    assert min(ages) < 57.0 and max(ages) > 63.0


def test_age_recycling_fires_from_the_timer() -> None:
    h = Harness(rng=FixedJitter(0.5), policy="round_robin", max_connection_age=25)
    h.resolve(A, B)
    h.ready(A, B)
    h.run_timer(T0 + 24.9)
    assert len(h.transport.opened) == 2
    h.run_timer(T0 + 25.0)
    assert len(h.transport.opened) == 4
    assert h.balancer.counters["recycles"] == 0  # not until the replacements are ready
    for connection in h.transport.opened[2:]:
        h.balancer.connectivity_changed(connection, S.READY)
    assert h.balancer.counters["recycles"] == 2
    assert h.transport.closed == h.transport.opened[:2]


def test_no_age_limit_by_default() -> None:
    h = Harness()
    h.resolve(A)
    h.ready(A)
    assert h.active(A).expires_at is None
    h.run_timer(T0 + 86400)
    assert len(h.transport.opened) == 1


def test_age_grace_closes_a_draining_connection_with_calls() -> None:
    h = Harness(policy="pick_first", max_requests_per_connection=1, max_connection_age_grace=5)
    h.resolve(A)
    h.ready(A)
    stuck = h.call()
    new = h.transport.of(A)[-1]
    h.clock.now = T0 + 1
    h.balancer.connectivity_changed(new, S.READY)
    assert h.transport.closed == []
    h.clock.now = T0 + 5.9
    assert h.balancer.maintain() == pytest.approx(T0 + 6)
    assert h.transport.closed == []
    h.clock.now = T0 + 6
    h.balancer.maintain()
    assert h.transport.closed == [stuck.connection]
    stuck.release(C.CANCELLED)  # the cancelled call still releases its count
    assert h.transport.closed == [stuck.connection]  # closed once
    assert h.balancer.stats().in_flight == 0


def test_without_grace_a_draining_connection_waits_for_its_calls() -> None:
    h = Harness(policy="pick_first", max_requests_per_connection=1)
    h.resolve(A)
    h.ready(A)
    stuck = h.call()
    h.balancer.connectivity_changed(h.transport.of(A)[-1], S.READY)
    h.run_timer(T0 + 3600)
    assert h.transport.closed == []
    stuck.release(C.OK)
    assert h.transport.closed == [stuck.connection]


def test_grace_also_applies_to_removed_pods() -> None:
    h = Harness(policy="pick_first", max_connection_age_grace="2s")
    h.resolve(A, B)
    h.ready(A, B)
    stuck = h.call()
    h.resolve(B)
    h.clock.now = T0 + 2
    h.balancer.maintain()
    assert h.transport.closed == [stuck.connection]
    assert list(h.rows()) == [B]


# --- ejection -------------------------------------------------------------------------


def test_consecutive_failures_eject_and_the_timer_returns_the_pod() -> None:
    h = Harness(policy="round_robin", consecutive_failures=3)
    h.resolve(A, B, CC)
    h.ready(A, B, CC)
    h.fail_on(A, 2)
    assert h.states()[A] == "ready"
    h.fail_on(A, 1)
    assert h.balancer.counters["ejections"] == 1
    row = h.rows()[A]
    assert (row.state, row.ejections, row.failures) == ("ejected", 1, 3)
    assert A not in h.picks(60)
    h.run_timer(T0 + 29.9)
    assert h.states()[A] == "ejected"
    h.run_timer(T0 + 30)  # base_ejection_time after the ejection, on an interval tick
    assert h.states()[A] == "ready"
    assert Counter(h.picks(60)) == {A: 20, B: 20, CC: 20}


def test_second_ejection_lasts_twice_as_long() -> None:
    h = Harness(policy="round_robin", consecutive_failures=1)
    h.resolve(A, B, CC)
    h.ready(A, B, CC)
    h.fail_on(A)
    h.run_timer(T0 + 30)
    assert h.states()[A] == "ready"
    h.clock.now = T0 + 31
    h.fail_on(A)
    h.run_timer(T0 + 31 + 59)
    assert h.states()[A] == "ejected"
    h.run_timer(T0 + 31 + 69)  # the first tick at or after 60s
    assert h.states()[A] == "ready"
    assert h.rows()[A].ejections == 2


def test_application_errors_never_eject() -> None:
    h = Harness(policy="round_robin", consecutive_failures=1)
    h.resolve(A, B)
    h.ready(A, B)
    h.fail_on(A, 50, code=C.NOT_FOUND)
    assert h.states()[A] == "ready"
    assert h.balancer.counters["ejections"] == 0


def test_never_eject_the_last_pod() -> None:
    h = Harness(consecutive_failures=1, max_ejection_percent=100)
    h.resolve(A)
    h.ready(A)
    for _ in range(20):
        h.call().release(C.UNAVAILABLE)
    assert h.states() == {A: "ready"}


@pytest.mark.parametrize(
    ("overrides", "per_pod", "failed_per_pod", "ejected"),
    [
        ({}, 100, 50, True),  # success rate 0.5 against four at 1.0
        ({}, 99, 50, False),  # below success_rate_request_volume
        ({"success_rate_minimum_hosts": 6}, 100, 50, False),
        ({"success_rate_ejection": False}, 100, 50, False),
        (
            {"success_rate_ejection": False, "failure_percentage_ejection": True},
            50,
            43,  # 86 %
            True,
        ),
        (
            {"success_rate_ejection": False, "failure_percentage_ejection": True},
            50,
            42,  # 84 %
            False,
        ),
    ],
    ids=[
        "success_rate",
        "success_rate_low_volume",
        "success_rate_minimum_hosts",
        "success_rate_off",
        "failure_percentage",
        "failure_percentage_below_threshold",
    ],
)
def test_interval_analysis_ejects_from_counted_outcomes(
    overrides: dict[str, object], per_pod: int, failed_per_pod: int, ejected: bool
) -> None:
    h = Harness(policy="round_robin", consecutive_failures=0, **overrides)
    h.resolve(A, B, CC, D, E)
    h.ready(A, B, CC, D, E)
    failed = 0
    for _ in range(5 * per_pod):  # round_robin: exactly per_pod calls each
        connection = h.call()
        bad = connection.endpoint.address == E and failed < failed_per_pod
        failed += bad
        connection.release(C.UNAVAILABLE if bad else C.OK)
    assert h.rows()[E].calls == per_pod
    h.run_timer(T0 + 9.9)
    assert h.states()[E] == "ready"
    h.run_timer(T0 + 10)
    assert (h.states()[E] == "ejected") is ejected
    assert h.balancer.counters["ejections"] == int(ejected)
    assert set(h.states().values()) - {"ejected"} == {"ready"}


def test_interval_counts_start_afresh() -> None:
    h = Harness(policy="round_robin", consecutive_failures=0)
    h.resolve(A, B, CC, D, E)
    h.ready(A, B, CC, D, E)
    for i in range(250):  # half an interval's worth of bad calls on E
        connection = h.call()
        bad = connection.endpoint.address == E and i % 2
        connection.release(C.UNAVAILABLE if bad else C.OK)
    h.run_timer(T0 + 10)
    for _ in range(250):
        h.call().release(C.OK)
    h.run_timer(T0 + 20)
    assert h.balancer.counters["ejections"] == 0


@pytest.mark.parametrize("panic_threshold", [50, 0])
def test_panic_mode_balances_over_all_pods(panic_threshold: float) -> None:
    h = Harness(
        policy="round_robin",
        consecutive_failures=1,
        max_ejection_percent=100,
        panic_threshold=panic_threshold,
    )
    h.resolve(A, B, CC, D)
    h.ready(A, B, CC, D)
    h.fail_on(A)
    h.fail_on(B)
    assert not h.balancer.stats().panic  # 2 of 4 usable is not below 50 %
    assert set(h.picks(20)) == {CC, D}
    h.fail_on(CC)
    assert h.balancer.counters["ejections"] == 3
    if panic_threshold:
        assert h.balancer.stats().panic
        assert Counter(h.picks(40)) == {A: 10, B: 10, CC: 10, D: 10}
    else:
        assert not h.balancer.stats().panic
        assert set(h.picks(20)) == {D}


def test_panic_ends_when_pods_return() -> None:
    h = Harness(policy="round_robin", consecutive_failures=1, max_ejection_percent=100)
    h.resolve(A, B, CC)
    h.ready(A, B, CC)
    h.fail_on(A)
    h.fail_on(B)
    assert h.balancer.stats().panic
    h.run_timer(T0 + 30)
    assert not h.balancer.stats().panic
    assert set(h.states().values()) == {"ready"}


# --- retry budget ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("min_concurrency", "percent", "normal", "retries", "allowed"),
    [
        (10, 20, 0, 0, True),
        (10, 20, 0, 9, True),  # the floor: 10 always allowed
        (10, 20, 0, 10, False),
        (2, 20, 0, 1, True),
        (2, 20, 0, 2, False),
        # The call asking for a retry counts as in flight, as Envoy counts the request
        # it retries, although its failed attempt has been released.
        (0, 20, 80, 19, True),  # 19 retries of 99 in flight, +1 asking: 19 < 20
        (0, 20, 80, 20, False),  # 20 of 100 + 1: int(20.2) = 20, the budget is spent
        (10, 20, 120, 29, True),  # the percentage beats the floor: 29 < 30
        (10, 20, 120, 30, False),  # 30 of 150 + 1
        # Envoy truncates the share: 1 % of 50 calls allows no retry at all.
        (0, 1, 49, 0, False),
        (0, 1, 99, 0, True),
        (10, 20, 5, 9, True),  # the floor beats the percentage
        (0, 0, 10, 0, False),
    ],
    ids=str,
)
def test_retry_budget(
    min_concurrency: int, percent: float, normal: int, retries: int, allowed: bool
) -> None:
    h = Harness(
        policy="round_robin",
        retry_budget_min_concurrency=min_concurrency,
        retry_budget_percent=percent,
    )
    h.resolve(A, B)
    h.ready(A, B)
    for _ in range(normal):
        h.call()
    for _ in range(retries):
        h.call(retry=True)
    assert h.balancer.reserve_retry() is allowed
    stats = h.balancer.stats()
    assert stats.retries == retries + (1 if allowed else 0)
    assert stats.retries_refused == (0 if allowed else 1)


def test_finished_retries_free_the_budget() -> None:
    h = Harness(retry_budget_min_concurrency=2, retry_budget_percent=0)
    h.resolve(A)
    h.ready(A)
    retries = [h.call(retry=True) for _ in range(2)]
    assert not h.balancer.reserve_retry()
    assert not h.balancer.reserve_retry()
    retries[0].release(C.UNAVAILABLE)
    assert h.balancer.reserve_retry()
    assert h.balancer.stats().retries_refused == 2


def test_a_reserved_retry_that_never_starts_gives_its_place_back() -> None:
    h = Harness(retry_budget_min_concurrency=1, retry_budget_percent=0)
    h.resolve(A)
    h.ready(A)
    assert h.balancer.reserve_retry()
    assert not h.balancer.reserve_retry()
    h.balancer.cancel_retry()
    assert h.balancer.reserve_retry()


def test_retries_admitted_together_respect_the_budget() -> None:
    h = Harness(retry_budget_min_concurrency=2, retry_budget_percent=0)
    h.resolve(A, B)
    h.ready(A, B)
    failing = [h.call() for _ in range(5)]  # five calls fail at the same moment
    admitted = [h.balancer.reserve_retry() for _ in failing]
    assert admitted.count(True) == 2


# --- consistent hashing ---------------------------------------------------------------

KEYS = [hash_key(f"user-{i}") for i in range(300)]


def owners(h: Harness) -> dict[int, str]:
    return {key: h.picks(1, request_hash=key)[0] for key in KEYS}


@pytest.mark.parametrize(
    "flap",
    [
        [S.TRANSIENT_FAILURE, S.CONNECTING, S.READY],
        [S.IDLE, S.CONNECTING, S.READY],
    ],
    ids=["transient_failure", "idle"],
)
@pytest.mark.parametrize("policy", ["ring_hash", "maglev"])
def test_keys_stay_on_their_pod_while_another_pod_flaps(policy: str, flap: list[S]) -> None:
    h = Harness(policy=policy, **HASH_SETTINGS)
    h.resolve(A, B, CC, D, E)
    h.ready(A, B, CC, D, E)
    before = owners(h)
    victims = [k for k, owner in before.items() if owner == CC]
    assert 20 < len(victims) < 120  # CC owns about a fifth
    h.set_state(CC, flap[0])
    during = owners(h)
    for key, owner in before.items():
        if owner == CC:
            assert during[key] != CC
        else:
            assert during[key] == owner
    for state in flap[1:]:
        h.set_state(CC, state)
    assert owners(h) == before


def test_calls_without_a_hash_key_are_spread() -> None:
    h = Harness(policy="ring_hash", **HASH_SETTINGS)
    h.resolve(A, B, CC)
    h.ready(A, B, CC)
    assert set(h.picks(100)) == {A, B, CC}


# --- views ----------------------------------------------------------------------------


def test_stats_rows_and_states() -> None:
    h = Harness(policy="round_robin", consecutive_failures=1, max_ejection_percent=100)
    h.resolve(A, B, CC, D)
    h.ready(A, CC, D)
    h.set_state(B, S.CONNECTING)
    h.fail_on(CC)
    held = h.call_on(D)
    h.resolve(A, B, CC, E)
    h.clock.now = T0 + 7
    stats = h.balancer.stats()
    assert h.states() == {
        A: "ready",
        B: "connecting",
        CC: "ejected",
        E: "idle",
        D: "draining",
    }
    assert [row.address for row in stats] == [A, B, CC, E, D]  # members sorted, then departed
    assert (stats.target, stats.policy) == (TARGET, "round_robin")
    assert (stats.in_flight, stats.calls, stats.failures) == (1, 2, 1)
    assert len(stats) == 5
    rows = stats.by_address()
    assert rows[A].connection_age == 7.0
    assert rows[D].in_flight == 1
    assert rows[D].connection_age is None  # no active connection, only a draining one
    assert rows[CC].ejections == 1
    assert rows[E].connections_opened == 1
    with pytest.raises(AttributeError):
        rows[A].calls = 3  # type: ignore[misc]
    text = repr(h.balancer)
    for part in ("1 connecting", "1 draining", "1 ejected", "1 idle", "1 ready", "in_flight=1"):
        assert part in text
    assert TARGET in text
    assert "round_robin" in text
    held.release(C.OK)
    assert "draining" not in repr(h.balancer)


def test_stats_are_a_snapshot() -> None:
    h = Harness()
    h.resolve(A)
    h.ready(A)
    before = h.balancer.stats()
    h.call()
    assert before.in_flight == 0
    assert before.by_address()[A].calls == 0


def test_repr_without_endpoints() -> None:
    h = Harness()
    assert "no endpoints" in repr(h.balancer)
    h.resolve(A, B)
    h.ready(A, B)
    assert "2 ready" in repr(h.balancer)


def test_picker_changes_wake_the_flavour() -> None:
    h = Harness()
    h.resolve(A)
    wakes = h.transport.wakes
    h.ready(A)
    assert h.transport.wakes > wakes


# --- threads --------------------------------------------------------------------------


def test_counts_balance_under_concurrent_calls() -> None:
    h = Harness(policy="least_request")
    h.resolve(A, B, CC)
    h.ready(A, B, CC)
    per_thread = 300

    def worker() -> None:
        for i in range(per_thread):
            connection = h.call()
            connection.release(C.UNAVAILABLE if i % 50 == 0 else C.OK)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=10)
    assert not any(t.is_alive() for t in threads)
    stats = h.balancer.stats()
    assert stats.in_flight == 0
    assert stats.calls == 8 * per_thread
    assert sum(row.calls for row in stats) == 8 * per_thread
    assert all(row.in_flight == 0 for row in stats)
    assert all(c.in_flight == 0 for c in _live(h.transport.opened))


def _live(connections: Iterable[Connection]) -> list[Connection]:
    return [c for c in connections if not c.closing]


def test_a_pod_back_in_dns_while_draining_is_found_by_address_as_live() -> None:
    h = Harness(policy="round_robin")
    h.resolve(A, B)
    h.ready(A, B)
    busy = h.call_on(A)  # keeps A's old connection draining
    h.resolve(B)
    h.resolve(A, B)
    rows = [e for e in h.balancer.stats().endpoints if e.address == A]
    assert sorted(r.state for r in rows) == ["draining", "idle"]
    assert h.balancer.stats().by_address()[A].state == "idle"
    busy.release(C.OK)


# --- wait_for_ready picks ---------------------------------------------------------------


def test_a_wait_for_ready_pick_never_lands_on_a_pod_that_is_not_ready() -> None:
    h = Harness(policy="round_robin")
    h.resolve(A, B)
    assert h.balancer.start_call(None, (), "", False, True) is None  # nothing READY yet
    h.ready(B)
    picks = {h.balancer.start_call(None, (), "", False, True).endpoint.address for _ in range(6)}  # type: ignore[union-attr]
    assert picks == {B}


def test_a_wait_for_ready_hash_pick_whose_pod_connects_goes_to_a_ready_pod() -> None:
    # The key's pod still connecting must not leave the call spinning between a pick that
    # refuses and an admission that sees READY pods: another READY pod takes it.
    h = Harness(policy="ring_hash", hash_key="x-user")
    h.resolve(A, B, CC)
    h.ready(A, B, CC)
    h.set_state(A, S.CONNECTING)
    h.set_state(B, S.CONNECTING)
    for key in range(50):
        attempt = h.balancer.start_call(key * 0x9E3779B97F4A7C15 % 2**64, (), "", False, True)
        assert attempt is not None and attempt.endpoint.address == CC
        attempt.release(C.OK)


def test_an_attempt_is_recorded_once_when_two_releases_race() -> None:
    """A done-callback and the awaiting task (or two threads) may release at once: one wins."""
    from grpclb.telemetry import NullTelemetry

    class Recording(NullTelemetry):
        enabled = True

        def __init__(self) -> None:
            self.finished: list[grpc.StatusCode | None] = []
            self.racer: Attempt | None = None

        def attempt_finished(self, method, address, pods, code, seconds) -> None:  # type: ignore[no-untyped-def]
            self.finished.append(code)
            if self.racer is not None:  # the other release arrives while this one records
                racer, self.racer = self.racer, None
                racer.release(C.UNAVAILABLE)

    h = Harness(policy="round_robin")
    recording = Recording()
    h.balancer.telemetry = recording
    h.resolve(A)
    h.ready(A)
    attempt = h.call()
    recording.racer = attempt
    attempt.release(C.OK)
    assert recording.finished == [C.OK]
    assert h.balancer.stats().in_flight == 0
    assert h.endpoint(A).failures == 0  # the loser's verdict is not counted either
