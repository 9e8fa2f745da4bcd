"""Snapshots: rebuilding the picker when what is usable changes, at any fleet size.

These are the balancer's methods (a mixin of ``Balancer``), kept apart because
they are one idea: a change costs what changed, not the fleet. A pod lost
rebuilds the snapshot at once; pods gained in a big fleet are coalesced into
one rebuild; a big hash table is built off the lock, in slices, by
``maintain()``, while the old one serves. Methods named ``_locked`` expect the
balancer's lock held.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Generator, Sequence
from typing import TYPE_CHECKING

from grpclb.core.endpoints import READY, TRANSIENT_FAILURE, Endpoint
from grpclb.core.factory import PickerFactory
from grpclb.core.hashing import HashTable
from grpclb.core.health import PENDING, UNHEALTHY
from grpclb.core.pickers import Picker

if TYPE_CHECKING:
    from grpclb.config.settings import Settings
    from grpclb.config.target import Target
    from grpclb.core.slowstart import SlowStart

log = logging.getLogger("grpclb")

# Up to this many pods, a pod becoming usable rebuilds the snapshot at once.
_COALESCE_ABOVE_PODS = 64
# A pick rebuilds a stale snapshot only this many rebuild-times after the last rebuild.
_REBUILD_SPACING = 20.0
# How long one maintain() builds a big hash table before giving its thread back.
_TABLE_SLICE_S = 0.005
# A table build starts at least this many times its predecessor's cost after it ended.
_TABLE_SPACING = 4.0


class _StalePicker:
    """Stands for a snapshot that lacks pods that became usable since it was built."""

    __slots__ = ("_owner", "_previous")

    def __init__(self, owner: Snapshots, previous: Picker[Endpoint]) -> None:
        self._owner, self._previous = owner, previous

    def pick(self, request_hash: int | None) -> Endpoint | None:
        return self._owner._pick_stale(self._previous, request_hash)


class Snapshots:
    """The picker snapshot's upkeep (a part of ``Balancer``)."""

    target: Target
    settings: Settings
    closed: bool
    panic: bool
    rebuilds: int
    _lock: threading.Lock
    _endpoints: dict[str, Endpoint]
    _members: list[Endpoint]
    _pickers: PickerFactory[Endpoint]
    _snapshot: tuple[Picker[Endpoint], Sequence[Endpoint]]
    _any_ready: bool
    _stale: bool
    _wake_later: bool
    _rebuild_cost: float
    _rebuilt_at: float
    _table_job: tuple[int, Generator[None, None, HashTable]] | None
    _table_spent: float
    _table_next_at: float
    _holding: bool
    _ramp_due: float | None
    _slow_start: SlowStart
    _clock: Callable[[], float]

    def _holds_calls_locked(self, candidates: Sequence[Endpoint]) -> bool:  # pragma: no cover
        raise NotImplementedError  # BalancerViews'

    def _rebuild_locked(self) -> None:
        """Build the snapshot now: for every change that takes a pod out of rotation."""
        started = time.perf_counter()
        members = self._members
        # Active health (gRFC A17): an unhealthy pod leaves rotation as an ejected one does.
        healthy = [e for e in members if not e.outlier.ejected and e.health not in UNHEALTHY]
        panic = bool(members) and len(healthy) * 100 < self.settings.panic_threshold * len(members)
        if panic != self.panic:
            (log.warning if panic else log.info)(
                "grpclb %s: panic mode %s (%d of %d pods usable)",
                self.target.text,
                "entered" if panic else "left",
                len(healthy),
                len(members),
            )
        self.panic = panic
        candidates = members if self.panic else healthy
        if members and not candidates:
            # Every pod is ejected (a scale-down can leave only ejected ones): ejection
            # must never empty the set, so those not unhealthy serve again.
            candidates = [e for e in members if e.health not in UNHEALTHY]
        # "The subchannel will stay in state CONNECTING until it receives the first
        # health-check response" - A17: a pod awaiting its answer is not READY yet.
        usable = [e for e in candidates if e.state is READY and e.health != PENDING]
        self._any_ready = bool(usable)
        self._holding = not usable and self._holds_calls_locked(candidates)
        if not usable and not self._holding:  # nothing connected: queue on pods that may connect
            usable = [e for e in candidates if e.state is not TRANSIENT_FAILURE] or candidates
        weights, self._ramp_due = self._slow_start.weights(usable, self._clock())
        picker = self._pickers.build(members, usable, self._endpoints, weights)
        self._snapshot = (picker, usable)
        self._stale = False
        self._wake_later = True
        self.rebuilds += 1
        self._rebuilt_at = time.perf_counter()
        self._rebuild_cost = self._rebuilt_at - started

    def _refresh_locked(self) -> None:
        """A pod became usable: rebuild, coalescing a burst of these into one rebuild.

        The current snapshot stays right meanwhile (every pod in it is still usable:
        a loss rebuilds at once), it only lacks the newcomers. So a big fleet marks
        the snapshot stale and lets the next ``maintain()`` or, at most once per
        twenty rebuild-times, the next pick rebuild it: start-up over N pods costs
        O(N) rebuilds of O(N) only while they are cheap, and a bounded share of the
        time when they are not.
        """
        if len(self._members) <= _COALESCE_ABOVE_PODS or not self._any_ready:
            self._rebuild_locked()
        elif not self._stale:
            self._stale = True
            self._wake_later = True
            picker, usable = self._snapshot
            self._snapshot = (_StalePicker(self, picker), usable)

    def _pick_stale(self, previous: Picker[Endpoint], request_hash: int | None) -> Endpoint | None:
        """A pick from a stale snapshot: rebuild it first when that is due."""
        if time.perf_counter() - self._rebuilt_at >= _REBUILD_SPACING * self._rebuild_cost:
            with self._lock:
                if self._stale and not self.closed:
                    self._rebuild_locked()
            picker = self._snapshot[0]
            if not isinstance(picker, _StalePicker):
                return picker.pick(request_hash)
        return previous.pick(request_hash)

    def _advance_table(self, now: float) -> float | None:
        """Build the wanted hash table for a slice of time, off the lock; when to come back.

        Only ``maintain()`` calls this, from the flavour's one background thread or
        task, so the job needs no lock; the table is installed under it when done.
        A build starts no sooner than ``_TABLE_SPACING`` times the last one's cost
        after it ended, so a fleet changing faster than tables build (a Maglev table
        is rebuilt whole) coalesces its changes instead of building back to back.
        """
        job = self._table_job
        if job is None:
            if not self._pickers.table_wanted:
                return None
            if now < self._table_next_at:
                return self._table_next_at
            with self._lock:
                if self.closed or not self._pickers.table_wanted:
                    return None
                job = self._table_job = self._pickers.table_steps()
                self._table_spent = 0.0
        version, steps = job
        started = time.perf_counter()
        try:
            while time.perf_counter() - started < _TABLE_SLICE_S:
                next(steps)
        except StopIteration as done:
            self._table_job = None
            self._table_spent += time.perf_counter() - started
            self._table_next_at = now + _TABLE_SPACING * self._table_spent
            with self._lock:
                if self.closed:
                    return None
                self._pickers.install(version, done.value)
                self._rebuild_locked()
            return self._table_next_at if self._pickers.table_wanted else None
        self._table_spent += time.perf_counter() - started
        return now
