"""The balancer core: endpoint set, connections, pickers, ejection, recycling.

One object shared by the sync and asyncio channels. It does no I/O itself:
state changes happen under one lock, and the I/O they call for (open a
connection, close one, ask an idle one to connect) is handed to the flavour's
``Transport`` after the lock is released, as httpcore's pool does.

Picks read an immutable snapshot without the lock; only the in-flight
bookkeeping around a call takes it, for a few attribute updates.
"""

from __future__ import annotations

import logging
import math
import random
import threading
import time
import weakref
from collections.abc import Callable, Collection, Generator, Sequence

import grpc

from grpclb.config.settings import Settings
from grpclb.config.target import Target
from grpclb.core.attempt import Attempt
from grpclb.core.budget import RetryBudget
from grpclb.core.endpoints import (
    IDLE,
    READY,
    TRANSIENT_FAILURE,
    Connection,
    Endpoint,
    Transport,
)
from grpclb.core.factory import PickerFactory
from grpclb.core.hashing import HashTable
from grpclb.core.health import EndpointHealth
from grpclb.core.outlier import NO_VERDICT, OutlierDetector, OutlierRecord, Verdict
from grpclb.core.pickers import NO_PICKER, Picker, pick_avoiding
from grpclb.core.recycling import ConnectionLifecycle
from grpclb.core.slowstart import SlowStart
from grpclb.core.snapshots import Snapshots
from grpclb.core.subsetting import Subsetter
from grpclb.core.transaction import AtomicAnswers
from grpclb.core.views import BalancerViews
from grpclb.errors import LocalRpcError
from grpclb.resolver import Resolution
from grpclb.stats import ChannelStats, channel_stats, summary_line
from grpclb.telemetry import NULL_TELEMETRY, Telemetry, current_context, trace_attempt

log = logging.getLogger("grpclb")
Clock = Callable[[], float]
_Action = Callable[[], None]
_CANCELLED = grpc.StatusCode.CANCELLED
_OK = grpc.StatusCode.OK
_NO_ACTIONS: list[_Action] = []  # never appended to


class Balancer(
    BalancerViews, ConnectionLifecycle, Snapshots, EndpointHealth, AtomicAnswers, RetryBudget
):
    """Owns the pods of one target and answers which connection serves a call."""

    def __init__(
        self,
        target: Target,
        settings: Settings,
        transport: Transport,
        *,
        clock: Clock = time.monotonic,
        rng: random.Random | None = None,
        telemetry: Telemetry = NULL_TELEMETRY,
        attempt_type: type[Attempt] = Attempt,
    ) -> None:
        self.target = target
        self.settings = settings
        self.telemetry = telemetry
        # Weakly: the flavour's channel owns the balancer, and grpcio's threads reach the
        # balancer through connection watchers; a strong link back would keep a dropped
        # channel alive for good.
        self._transport = weakref.proxy(transport)
        self._clock = clock
        self._attempt_type = attempt_type  # the flavour's: an asyncio attempt is its own callback
        self._rng = rng or random.Random()
        self._lock = threading.Lock()
        self._endpoints: dict[str, Endpoint] = {}
        self._departed: list[Endpoint] = []  # removed from DNS, still draining
        self._pickers: PickerFactory[Endpoint] = PickerFactory(settings, self._rng)
        self._snapshot: tuple[Picker[Endpoint], Sequence[Endpoint]] = (NO_PICKER, ())
        self._members: list[Endpoint] = []  # the pods, by address; kept with _endpoints
        self._any_ready = False  # the snapshot has a READY pod
        self._stale = False  # pods became usable since the snapshot was built
        self._rebuild_cost = 0.0  # seconds the last snapshot took to build
        self._rebuilt_at = -math.inf  # time.perf_counter() when it was built
        self.rebuilds = 0
        self._table_job: tuple[int, Generator[None, None, HashTable]] | None = None
        self._table_spent = 0.0  # seconds the current (or last) table build has taken
        self._table_next_at = -math.inf  # no table build starts before (balancer clock)
        self.subsetter = Subsetter(settings)
        self.resolved_pods = 0  # in the last DNS answer; more than the pods when subsetting
        self._detector = OutlierDetector(settings, self._rng)
        self._records: list[OutlierRecord] = []  # every member's, for the detector
        self._next_interval = clock() + settings.ejection_interval
        self._slow_start = SlowStart(settings)
        self._ramp_due: float | None = None  # next weight refresh while a pod ramps up
        # Read on every call: plain attributes, not settings lookups.
        self._max_requests = settings.max_requests
        self._max_requests_per_connection = settings.max_requests_per_connection
        self._failure_codes = settings.failure_codes
        self._in_flight = 0
        self._retries_in_flight = 0
        self._retries_waiting = 0  # granted, attempt not started yet (backoff, waiting)
        self.panic = False
        self._wake_later = False
        self._dns_failing = False
        self._hosts_answer = False  # the set came from the hosts file: see _holds_calls_locked
        self._holding = False  # calls wait for a first READY pod (admission_view)
        self.resolve_requested = False
        self.resolved_once = False
        self.closed = False
        names = "calls failures resolutions resolution_failures retries retries_refused"
        names += " circuit_breaker_refusals ejections recycles update_failures"
        self.counters = dict.fromkeys(names.split(), 0)
        self.last_resolution_error = ""
        self.last_update_error = ""  # why the last answer could not be applied, if it failed

    def __repr__(self) -> str:
        return summary_line(self.stats())

    def stats(self) -> ChannelStats:
        return channel_stats(self, self.endpoint_stats())

    # --- resolution -------------------------------------------------------------

    def update(self, resolution: Resolution) -> None:
        """Apply a resolution: failures keep the last good set; answers replace it."""
        actions: list[_Action] = []
        with self._lock:
            if self.closed:
                return  # an answer that arrives after close() opens nothing
            self.counters["resolutions"] += 1
            self.last_resolution_error = resolution.error
            self._wake_later = True  # callers waiting for a first answer learn of it
            was_failing, self._dns_failing = self._dns_failing, resolution.failed
            if resolution.failed:
                self.counters["resolution_failures"] += 1
                self.telemetry.resolved("failure")
                if not was_failing:
                    kept = len(self._endpoints)
                    log.warning(
                        "grpclb %s: %s; %s",
                        self.target.text,
                        resolution.error,
                        f"keeping the last {kept} pods" if kept else "no pods known yet",
                    )
            else:
                self.telemetry.resolved("records" if resolution.addresses else "empty")
                if was_failing:
                    log.info("grpclb %s: DNS answers again", self.target.text)
                self.resolved_once = True
                self._hosts_answer = resolution.source == "hosts"
                self._apply_answer_locked(set(resolution.addresses or ()), actions)
        self._run(actions)

    def _apply_addresses_locked(self, wanted: set[str], actions: list[_Action]) -> None:
        self.resolved_pods = len(wanted)
        if self.subsetter.enabled:
            wanted = self.subsetter.choose(wanted)  # connect to and balance over these only
        if wanted == self._endpoints.keys():
            return  # an unchanged answer keeps the picker, and round robin's rotation
        for address in [a for a in self._endpoints if a not in wanted]:
            log.info("grpclb %s: pod %s removed; draining", self.target.text, address)
            self._remove_locked(self._endpoints.pop(address), actions)
        joining = bool(self._endpoints)  # slow start: only pods joining a running set ramp
        for address in sorted(wanted - self._endpoints.keys()):
            log.info("grpclb %s: pod %s added", self.target.text, address)
            endpoint = Endpoint(address)
            if joining:
                self._start_ramp_locked(endpoint)
            endpoint.outlier = OutlierRecord(address=address)
            self._endpoints[address] = endpoint
            endpoint.connection = self._open_locked(endpoint, actions)
        self._records = [e.outlier for e in self._endpoints.values()]
        self._members = [self._endpoints[a] for a in sorted(self._endpoints)]
        self._pickers.set_members(self._endpoints.keys())
        if self._pickers.table_wanted and self._pickers.table_inline():
            self._pickers.build_table_now()  # a small table: a few milliseconds
        self._rebuild_locked()

    def connectivity_changed(self, connection: Connection, state: grpc.ChannelConnectivity) -> None:
        """A channel's state changed (called from the flavour's watcher)."""
        actions: list[_Action] = []
        with self._lock:
            if connection.closing or self.closed:
                return
            previous, connection.state = connection.state, state
            endpoint = connection.endpoint
            if state is READY:
                connection.was_ready = True
                if connection is endpoint.replacement:
                    self._promote_locked(endpoint, actions)
            elif previous is READY:
                # A lost connection may mean a pod went away: ask DNS soon.
                self._request_resolution_locked()
                self.telemetry.disconnected(endpoint.address, len(self._endpoints))
            if state is IDLE and connection.draining_since is None:
                actions.append(lambda: self._transport.connect(connection))
            if connection is endpoint.connection:
                if previous is READY and state is not READY:
                    self._rebuild_locked()  # a pod lost leaves rotation at once
                elif state is READY and previous is not READY:
                    self._refresh_locked()  # a pod gained joins with the next batch
                elif state is TRANSIENT_FAILURE and not self._any_ready:
                    self._rebuild_locked()  # calls queue only on pods still connecting
        self._run(actions)

    def _request_resolution_locked(self) -> None:
        self.resolve_requested = True
        self._wake_later = True

    # --- picking ----------------------------------------------------------------

    def start_call(
        self,
        request_hash: int | None,
        avoid: Collection[Endpoint] = (),
        method: str = "",
        retry: bool = False,
        ready_only: bool = False,
    ) -> Attempt | None:
        """Pick a pod and count an attempt on it; None when no pod can take it now.

        ``retry``: the attempt uses a retry-budget grant (``reserve_retry``).
        ``ready_only``: only a READY pod will do (a wait_for_ready call must not be
        handed to a connecting pod's grpcio channel: grpcio would never move it).
        """
        limit = self._max_requests
        tries = 4  # a racing removal can retire the picked pod; pick again
        while tries:
            tries -= 1
            picker, usable = self._snapshot
            if avoid:
                endpoint = pick_avoiding(picker, usable, request_hash, avoid, self._rng)
            else:
                endpoint = picker.pick(request_hash)
            if endpoint is None:
                return None
            if ready_only and endpoint.state is not READY:
                # The pick (a hash key's pod, say) is still connecting: another READY pod
                # takes the call, or it waits; a wait that found READY pods would spin.
                ready = [e for e in usable if e.state is READY]
                ready = [e for e in ready if e not in avoid] or ready
                if not ready:
                    return None
                endpoint = ready[int(self._rng.random() * len(ready))]
            # (acquire and release, not ``with``: a third of the cost on this hot path)
            self._lock.acquire()
            try:
                connection = endpoint.connection
                if connection is None or endpoint.removed:
                    continue
                if limit is not None and self._in_flight >= limit:
                    self.counters["circuit_breaker_refusals"] += 1
                    self.telemetry.circuit_breaker_refused()
                    raise LocalRpcError(
                        grpc.StatusCode.UNAVAILABLE,
                        f"grpclb: {self._in_flight} calls in flight to {self.target.text} reached "
                        f"the circuit breaker limit max_requests={limit}",
                    )
                connection.in_flight += 1
                connection.requests += 1
                endpoint.in_flight += 1
                endpoint.calls += 1
                self._in_flight += 1
                if retry:
                    self._retries_waiting -= 1  # the granted retry is now an attempt
                self.counters["calls"] += 1
                cap = self._max_requests_per_connection
                recycle = cap is not None and connection.requests >= cap
                if recycle:
                    actions: list[_Action] = []
                    self._recycle_locked(endpoint, actions)
            finally:
                self._lock.release()
            if recycle:
                self._run(actions)
            started = 0.0
            if self.telemetry.enabled:
                started = time.perf_counter()
                self.telemetry.attempt_started(method, endpoint.address, len(self._endpoints))
            if current_context():  # a span may record (trace_attempt): the rare case
                trace_attempt(endpoint.address, len(avoid) + 1)
            return self._attempt_type(self, connection, retry, method, started)
        return None

    def release(self, attempt: Attempt, code: grpc.StatusCode | None) -> None:
        """End an attempt (see ``Attempt.release``): release its counts, learn from its outcome."""
        connection = attempt.connection
        actions: list[_Action] = _NO_ACTIONS  # a list is made only for a draining connection
        lock = self._lock
        lock.acquire()  # (not ``with``: see start_call)
        try:
            if attempt.released:
                return  # a racing release (a done-callback, another thread) came first
            attempt.released = True
            endpoint = connection.endpoint
            connection.in_flight -= 1
            endpoint.in_flight -= 1
            self._in_flight -= 1
            if attempt.retry:
                self._retries_in_flight -= 1
            if code is _OK:  # the common case, in short (StatusCode's hash is Python code)
                if not endpoint.removed:
                    self._detector.succeeded(endpoint.outlier)
            # A cancel (by the caller, or at close) says nothing about the pod.
            elif code is not None and code is not _CANCELLED:
                failed = code in self._failure_codes
                if failed:
                    endpoint.failures += 1
                    self.counters["failures"] += 1
                if not endpoint.removed:
                    now = self._clock() if failed else 0.0  # time matters only to failures
                    verdict = self._detector.record(endpoint.outlier, failed, now, self._records)
                    if verdict is not NO_VERDICT:
                        self._apply_verdict_locked(verdict)
            if connection.draining_since is not None:
                actions = []
                self._close_if_drained_locked(connection, actions)
        finally:
            lock.release()
        if attempt.started:  # telemetry is on: recorded by the one release that won, unlocked
            self.telemetry.attempt_finished(
                attempt.method,
                connection.endpoint.address,
                len(self._endpoints),
                code,
                time.perf_counter() - attempt.started,
            )
        if actions or self._wake_later:
            self._run(actions)

    def _apply_verdict_locked(self, verdict: Verdict) -> None:
        for method in verdict.overflowed:
            self.telemetry.ejection_overflow(method)
        if not verdict:
            return
        pods = len(self._endpoints)
        for record, reason in zip(verdict.ejected, verdict.reasons, strict=True):
            self.counters["ejections"] += 1
            self.telemetry.ejected(record.address, pods, reason)
            log.warning(
                "grpclb %s: pod %s ejected (%s) for %.3gs",
                self.target.text,
                record.address,
                reason,
                self._detector.ejection_time(record),
            )
        for record in verdict.returned:
            log.info("grpclb %s: pod %s returned from ejection", self.target.text, record.address)
            returned = self._endpoints.get(record.address)
            if returned is not None:
                self._start_ramp_locked(returned)
        self._rebuild_locked()

    # --- time ---------------------------------------------------------------------

    def maintain(self) -> float:
        """Run what is due (outlier interval, connection ages, drain grace); return when next."""
        actions: list[_Action] = []
        now = self._clock()
        with self._lock:
            due = [self._next_interval]
            if now >= self._next_interval:
                self._apply_verdict_locked(self._detector.on_interval(self._records, now))
                self._next_interval = now + self.settings.ejection_interval
                due = [self._next_interval]
            if self._ramp_due is not None:  # slow start: weights move, rebuild the snapshot
                if now >= self._ramp_due:
                    self._rebuild_locked()
                if self._ramp_due is not None:
                    due.append(self._ramp_due)
            due += self._age_connections_locked(now, actions)
            if self._stale:
                self._rebuild_locked()
        table_due = self._advance_table(now)  # off the lock; installs under it when done
        if table_due is not None:
            due.append(table_due)  # more of the table to build, or the next one
        self._run(actions)  # after the table: a new snapshot wakes waiting calls now
        return min(due)

    def _start_ramp_locked(self, endpoint: Endpoint) -> None:
        """Slow start: the pod's weight ramps up from now (no-op when slow start is off)."""
        self._slow_start.start(endpoint, self._clock())

    def _run(self, actions: list[_Action]) -> None:
        for action in actions:
            action()
        if self._wake_later:
            self._wake_later = False
            self._transport.wake()

    def shutdown(self) -> list[Connection]:
        """Forget every pod; return every connection for the flavour to close."""
        with self._lock:
            self.closed = True
            connections = [
                c for e in [*self._endpoints.values(), *self._departed] for c in e.connections()
            ]
            for connection in connections:
                connection.closing = True
            for endpoint in [*self._endpoints.values(), *self._departed]:
                # A pick from the last snapshot must not be admitted any more.
                endpoint.removed = True
                endpoint.connection = endpoint.replacement = None
            self._endpoints.clear()
            self._members = []
            self._departed.clear()
            self._snapshot = (NO_PICKER, ())
            return connections
