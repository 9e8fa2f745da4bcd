"""The picker factory: the configured policy, a snapshot and a hash table make a picker.

Kept apart from the pickers themselves because it holds state across snapshots:
each member's table slot, and the consistent-hash table in use, which the
balancer rebuilds off its lock for big fleets and installs when done.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Collection, Generator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from grpclb.core.hashing import HashTable, MaglevTable, RingHashTable, next_prime
from grpclb.core.pickers import (
    NO_PICKER,
    E,
    HashPicker,
    LeastRequestPicker,
    Picker,
    PickFirstPicker,
    RandomPicker,
    RoundRobinPicker,
)

if TYPE_CHECKING:
    from grpclb.config.settings import Settings

log = logging.getLogger("grpclb")
T = TypeVar("T")


def maglev_size(configured: int, pods: int) -> int:
    """The configured table size, or a larger prime when the pods outgrow it.

    "M should be much larger than N" (Maglev, section 3.4): a table no larger
    than the pod set cannot give every pod an entry, so rather than fail every
    call it grows to the next prime above 100 entries per pod, and says so.
    """
    if configured > pods:
        return configured
    size = next_prime(100 * pods + 1)
    log.warning(
        "grpclb: maglev_table_size=%d is too small for %d pods; using %d", configured, pods, size
    )
    return size


# Tables at most this big are built at once, under the balancer's lock, as a change
# arrives (a few milliseconds); bigger ones are built off the lock in slices.
INLINE_RING_POINTS = 1 << 16
INLINE_MAGLEV_PODS = 64
# Most pods changed at once that a ring is patched for rather than built again.
INCREMENTAL_RING_PODS = 32


class PickerFactory(Generic[E]):
    """Turns the configured policy and a snapshot into a picker.

    The hash table of ring_hash/maglev is built over every member, usable or
    not, and only when membership changes, so a connection that flaps moves
    no keys and costs no rebuild. Each member address holds a *slot* (the
    index a table's walk yields) for as long as it is a member; a new address
    takes the lowest free slot. A table built for an older membership stays
    usable: its slots are mapped back to addresses, the departed ones empty.
    """

    def __init__(self, settings: Settings, rng: random.Random) -> None:
        self._settings = settings
        self._rng = rng
        self.hashing = settings.policy in ("ring_hash", "maglev")
        self._slots: list[str | None] = []  # the wanted slot of each member address
        self._slot_of: dict[str, int] = {}
        self._version = 0  # of _slots
        self._table: HashTable | None = None
        self._table_version = -1

    def set_members(self, addresses: Collection[str]) -> None:
        """Membership changed: free the departed addresses' slots, give new ones slots."""
        if not self.hashing:
            return
        for address in [a for a in self._slot_of if a not in addresses]:
            self._slots[self._slot_of.pop(address)] = None
        free = [i for i, a in enumerate(self._slots) if a is None]
        free.reverse()
        for address in sorted(a for a in addresses if a not in self._slot_of):
            slot = free.pop() if free else len(self._slots)
            if slot == len(self._slots):
                self._slots.append(None)
            self._slots[slot] = address
            self._slot_of[address] = slot
        while self._slots and self._slots[-1] is None:
            self._slots.pop()
        self._version += 1

    @property
    def table_wanted(self) -> bool:
        """The table in use was built for another membership."""
        return self.hashing and self._table_version != self._version

    def table_inline(self) -> bool:
        """The wanted table is small enough to build at once (see INLINE_*)."""
        s, pods = self._settings, len(self._slot_of)
        if s.policy == "ring_hash":
            return pods * s.ring_points_per_endpoint <= INLINE_RING_POINTS
        return pods <= INLINE_MAGLEV_PODS

    def table_steps(self) -> tuple[int, Generator[None, None, HashTable]]:
        """(membership version, a sliced build of its table), from the table in use if cheap."""
        s, slots = self._settings, tuple(self._slots)
        steps: Generator[None, None, Any]
        if s.policy == "ring_hash":
            old = self._table
            if isinstance(old, RingHashTable) and _changed(old.addresses, slots) <= (
                INCREMENTAL_RING_PODS
            ):
                steps = _at_once(old.updated, slots)
            else:
                steps = RingHashTable.steps(slots, s.ring_points_per_endpoint)
        else:
            size = maglev_size(s.maglev_table_size, len(self._slot_of))
            steps = MaglevTable.steps(slots, size)
        return self._version, steps

    def install(self, version: int, table: HashTable) -> None:
        """Use a finished table (built for membership ``version``) from now on."""
        if version > self._table_version:
            self._table, self._table_version = table, version

    def build_table_now(self) -> None:
        version, steps = self.table_steps()
        while True:
            try:
                next(steps)
            except StopIteration as done:
                self.install(version, done.value)
                return

    def build(
        self,
        members: Sequence[E],
        usable: Sequence[E],
        by_address: Mapping[str, E] | None = None,
        weights: Sequence[float] | None = None,
    ) -> Picker[E]:
        """``weights`` (one per usable endpoint, slow start) are given only when they differ."""
        s = self._settings
        if not usable:
            return NO_PICKER
        if weights is not None and s.policy in ("round_robin", "least_request", "random"):
            return self._weighted(usable, weights)
        if s.policy == "round_robin":
            return RoundRobinPicker(usable, self._rng)
        if s.policy == "least_request":
            return LeastRequestPicker(usable, self._rng, s.choice_count)
        if s.policy == "random":
            return RandomPicker(usable, self._rng)
        if s.policy == "pick_first":
            return PickFirstPicker(usable)
        if self._table is None:  # the first table is still being built: spread every call
            return RandomPicker(usable, self._rng)
        if by_address is None:
            by_address = {e.address: e for e in members}
        in_use = set(map(id, usable))
        slots = [
            by_address.get(a) if a is not None else None for a in _table_addresses(self._table)
        ]
        flags = [e is not None and id(e) in in_use for e in slots]
        return HashPicker(self._table, slots, flags, self._rng, spread=usable)

    def _weighted(self, usable: Sequence[E], weights: Sequence[float]) -> Picker[E]:
        s = self._settings
        return _weighted_picker(s.policy, usable, weights, self._rng, s.choice_count)


def _weighted_picker(
    policy: str, usable: Sequence[E], weights: Sequence[float], rng: random.Random, choices: int
) -> Picker[E]:
    from grpclb.core import weighted  # weighted imports the pickers' types

    if policy == "round_robin":
        return weighted.EdfRoundRobinPicker(usable, weights, rng)
    if policy == "least_request":
        return weighted.WeightedLeastRequestPicker(usable, weights, rng, choices)
    return weighted.WeightedRandomPicker(usable, weights, rng)


def _table_addresses(table: HashTable) -> tuple[str | None, ...]:
    addresses: tuple[str | None, ...] = getattr(table, "addresses", ())
    return addresses


def _changed(old: Sequence[str | None], new: Sequence[str | None]) -> int:
    width = max(len(old), len(new))
    return sum(
        1
        for i in range(width)
        if (old[i] if i < len(old) else None) != (new[i] if i < len(new) else None)
    )


def _at_once(build: Callable[[T], Any], arg: T) -> Generator[None, None, Any]:
    """A build done in one step, shaped like the sliced ones."""
    return build(arg)
    yield  # pragma: no cover - makes this a generator
