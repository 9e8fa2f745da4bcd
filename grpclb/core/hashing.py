"""Consistent-hash lookup tables for the ring_hash and maglev policies.

A table is built once per endpoint set, off the hot path, and is then an
immutable value: a pick is a pure function of (request hash, table), as in
Envoy's precomputed hashing load balancers. Tables only map hashes to endpoint
*indices*; which endpoints are usable is the picker's business, so a table
built over all endpoints keeps every key in place while a connection flaps.

Everything here is deterministic across processes, platforms and Python
versions (blake2b, never the salted built-in ``hash()``), so every client of a
service sends a given key to the same pod.
"""

from __future__ import annotations

import hashlib
import heapq
import sys
from array import array
from bisect import bisect_left
from collections.abc import Generator, Iterator, Sequence
from itertools import chain, cycle, islice
from typing import Protocol, TypeVar, cast

__all__ = ["HashTable", "MaglevTable", "RingHashTable", "hash_key", "is_prime"]

_U64 = (1 << 64) - 1
_POINTS_PER_DIGEST = 8  # one 64-byte blake2b digest holds eight 64-bit ring positions


def hash_key(value: str | bytes) -> int:
    """Hash a request's key value to 64 bits, the same in every process."""
    data = value.encode("utf-8") if isinstance(value, str) else value
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "big")


def next_prime(n: int) -> int:
    """The smallest prime >= n."""
    while not is_prime(n):
        n += 1
    return n


def is_prime(n: int) -> bool:
    """Deterministic Miller-Rabin: exact for every n below 3.3e24, fast for any config value."""
    if n < 2:
        return False
    small = (2, 3, 5, 7, 11, 13, 17, 19, 23, 29, 31, 37)
    for p in small:
        if n % p == 0:
            return n == p
    d, s = n - 1, 0
    while d % 2 == 0:
        d, s = d // 2, s + 1
    for a in small:  # these witnesses are sufficient for n < 3.3e24 (Sorenson & Webster)
        x = pow(a, d, n)
        if x in (1, n - 1):
            continue
        for _ in range(s - 1):
            x = x * x % n
            if x == n - 1:
                break
        else:
            return False
    return True


class HashTable(Protocol):
    """What a HashPicker needs from a consistent-hash table."""

    def walk(self, request_hash: int) -> Iterator[int]:
        """Endpoint indices: the owner of request_hash first, then fallbacks.

        Indices may repeat. The walk must be finite and must reach every
        endpoint index, so a picker can always fall through to a usable one.
        """
        ...

    @property
    def size(self) -> int:
        """Number of entries (ring points, table slots), for stats."""
        ...


T = TypeVar("T")


def _run(steps: Generator[None, None, T]) -> T:
    """Run a sliced build to its end; its value."""
    while True:
        try:
            next(steps)
        except StopIteration as done:
            return cast("T", done.value)


def _sorted_order(addresses: Sequence[str | None]) -> list[int]:
    """Caller indices of the present addresses in address order (holes, None, left out).

    Tables never depend on input order, only on the set of addresses; an index is
    the slot the caller gave the address, which is what a table's walk returns.
    """
    present = [i for i, a in enumerate(addresses) if a is not None]
    return sorted(present, key=lambda i: (addresses[i], i))


def _ring_positions(address: str, count: int) -> array[int]:
    """The address's ring positions: a function of the address string alone."""
    blocks = -(-count // _POINTS_PER_DIGEST)
    raw = b"".join(
        hashlib.blake2b(f"{address}-{block}".encode(), digest_size=64).digest()
        for block in range(blocks)
    )
    positions = array("Q")
    positions.frombytes(raw[: count * 8])
    if sys.byteorder == "big":  # read the digest as little-endian words on every platform
        positions.byteswap()
    return positions


class RingHashTable:
    """Ketama-style ring with a fixed number of points per endpoint.

    Unlike Envoy, which scales points so the whole ring has a fixed size (and so
    moves every host's points when one joins), each endpoint's points depend only
    on its address: a joining endpoint takes keys only for itself, and a leaving
    one gives back only its own. That is also what lets ``updated`` change the
    ring for the pods that changed, in time proportional to them (plus one copy
    of the ring's arrays), instead of hashing and sorting the whole fleet again.

    ``addresses`` is indexed by slot: a walk yields slots, and None is an empty
    slot (a pod that left, whose slot a later pod may take).
    """

    __slots__ = ("_addresses", "_count", "_owners", "_points", "_positions")

    def __init__(self, addresses: Sequence[str | None], points_per_endpoint: int = 1024) -> None:
        built = _run(RingHashTable.steps(addresses, points_per_endpoint))
        self._set(built._addresses, built._points, built._positions, built._owners)

    @staticmethod
    def steps(
        addresses: Sequence[str | None], points_per_endpoint: int = 1024, batch: int = 32
    ) -> Generator[None, None, RingHashTable]:
        """Build the ring, yielding between slices of work (``batch`` pods); returns it.

        Each batch's points are sorted apart (a sort holds the interpreter, so it is
        kept small) and the sorted batches are merged lazily, so no step holds the
        interpreter for long however big the fleet.
        """
        if points_per_endpoint < 1:
            raise ValueError(f"points_per_endpoint must be >= 1, got {points_per_endpoint}")
        addresses = tuple(addresses)
        order = _sorted_order(addresses)
        # Pack (position, address rank) into one int: sorting then orders the ring
        # by position and breaks the (astronomically rare) ties by address.
        runs: list[list[int]] = []
        for first in range(0, len(order), batch):
            packed: list[int] = []
            for rank in range(first, min(first + batch, len(order))):
                address = addresses[order[rank]]
                assert address is not None
                packed.extend(
                    [(p << 32) | rank for p in _ring_positions(address, points_per_endpoint)]
                )
            packed.sort()
            runs.append(packed)
            yield
        positions, owners = array("Q"), array("I")
        merged = heapq.merge(*runs)
        while True:
            chunk = list(islice(merged, 1 << 16))
            if not chunk:
                break
            positions.extend([p >> 32 for p in chunk])
            owners.extend([order[p & 0xFFFFFFFF] for p in chunk])
            yield
        result = RingHashTable.__new__(RingHashTable)
        result._set(addresses, points_per_endpoint, positions, owners)
        return result

    def _set(
        self,
        addresses: tuple[str | None, ...],
        points: int,
        positions: array[int],
        owners: array[int] | memoryview,
    ) -> None:
        self._addresses = addresses
        self._points = points
        self._positions = positions
        self._owners = owners if isinstance(owners, memoryview) else memoryview(owners).toreadonly()
        self._count = sum(a is not None for a in addresses)

    @property
    def addresses(self) -> tuple[str | None, ...]:
        """The address in each slot (None: empty), as the table was built for."""
        return self._addresses

    def updated(self, addresses: Sequence[str | None]) -> RingHashTable:
        """The table for a new slot assignment, equal to ``RingHashTable(addresses, points)``.

        Only the slots whose address changed are hashed; the new ring is the old
        one with their points cut out and spliced in (bisect per point, then one
        copy of the arrays), so one pod replaced at 1,000 pods costs milliseconds
        where a full build costs a second.
        """
        new = tuple(addresses)
        old = self._addresses
        width = max(len(old), len(new))
        changed = [
            i
            for i in range(width)
            if (old[i] if i < len(old) else None) != (new[i] if i < len(new) else None)
        ]
        positions, owners = self._positions, self._owners
        cut: list[int] = []  # indices of the ring to drop
        for slot in changed:
            address = old[slot] if slot < len(old) else None
            if address is None:
                continue
            for p in _ring_positions(address, self._points):
                i = bisect_left(positions, p)
                while owners[i] != slot:  # ties: the entry at p owned by this slot
                    i += 1
                cut.append(i)
        added: list[tuple[int, str, int]] = []  # (position, address, slot)
        for slot in changed:
            address = new[slot] if slot < len(new) else None
            if address is not None:
                added.extend((p, address, slot) for p in _ring_positions(address, self._points))
        added.sort()
        # Where each added point goes in the old ring: after every entry at a lower
        # position and, at equal positions, after the lower addresses (a fresh build's order).
        spliced: list[tuple[int, int, int]] = []  # (old index, position, slot)
        for p, address, slot in added:
            i = bisect_left(positions, p)
            while i < len(positions) and positions[i] == p and (old[owners[i]] or "") < address:
                i += 1
            spliced.append((i, p, slot))
        result = RingHashTable.__new__(RingHashTable)
        result._set(new, self._points, *_splice(positions, owners, sorted(cut), spliced))
        return result

    def walk(self, request_hash: int) -> Iterator[int]:
        owners = self._owners
        # The owner is the first point at or after the hash, wrapping past the top; then
        # the following points in ring order. Views, not copies: O(1) however big the ring.
        start = bisect_left(self._positions, request_hash & _U64)
        if start == len(owners):
            start = 0
        return chain(owners[start:], owners[:start])

    @property
    def size(self) -> int:
        return len(self._positions)

    def __repr__(self) -> str:
        return f"<RingHashTable [{self._count} endpoints, {self.size} points]>"


def _splice(
    positions: array[int],
    owners: memoryview,
    cut: list[int],
    spliced: list[tuple[int, int, int]],
) -> tuple[array[int], array[int]]:
    """New ring arrays: ``positions``/``owners`` without the ``cut`` indices (sorted), with
    ``spliced`` (old index to insert before, position, owner; sorted) put in place.

    Runs of untouched entries are copied as slices, so the Python-level work is
    proportional to the changed points, not to the ring.
    """
    new_positions, new_owners = array("Q"), array("I")
    # Byte views: array.frombytes copies a run in one memcpy.
    pos_bytes, own_bytes = memoryview(positions).cast("B"), owners.cast("B")
    pw, ow = positions.itemsize, owners.itemsize
    start = 0
    events = sorted([(i, 1, 0, 0) for i in cut] + [(i, 0, p, o) for i, p, o in spliced])
    for index, is_cut, position, owner in events:
        if index > start:
            new_positions.frombytes(pos_bytes[start * pw : index * pw])
            new_owners.frombytes(own_bytes[start * ow : index * ow])
            start = index
        if is_cut:
            start = index + 1
        else:  # an insertion sorts before a cut at the same index: it precedes that entry
            new_positions.append(position)
            new_owners.append(owner)
    new_positions.frombytes(pos_bytes[start * pw :])
    new_owners.frombytes(own_bytes[start * ow :])
    return new_positions, new_owners


def _maglev_hashes(address: str, table_size: int) -> tuple[int, int]:
    """(offset, skip) of the address's preference permutation."""
    digest = hashlib.blake2b(address.encode(), digest_size=16).digest()
    h1 = int.from_bytes(digest[:8], "big")
    h2 = int.from_bytes(digest[8:], "big")
    # "offset <- h1(name[i]) mod M; skip <- h2(name[i]) mod (M - 1) + 1" - Maglev §3.4
    return h1 % table_size, h2 % (table_size - 1) + 1


class MaglevTable:
    """Maglev lookup table (Eisenbud et al., NSDI 2016, §3.4).

    Near-perfect balance (each endpoint owns M/N or M/N + 1 slots) and O(1)
    lookup, at the price of slightly more than the minimal disruption when the
    endpoint set changes.

    The table is a function of the set of addresses only, so every client
    agrees on it; it cannot be patched for the pods that changed without
    depending on history. ``MaglevTable.steps`` builds it in slices instead, so a
    caller can build it off its lock, a few milliseconds at a time.
    ``addresses`` is indexed by slot, None an empty slot, as for the ring.
    """

    __slots__ = ("_addresses", "_count", "_table")
    _addresses: tuple[str | None, ...]
    _count: int
    _table: memoryview

    def __init__(self, addresses: Sequence[str | None], table_size: int = 65537) -> None:
        built = _run(MaglevTable.steps(addresses, table_size))
        self._addresses, self._count, self._table = built._addresses, built._count, built._table

    @staticmethod
    def steps(
        addresses: Sequence[str | None], table_size: int = 65537, slice_claims: int = 4096
    ) -> Generator[None, None, MaglevTable]:
        """Build the table, yielding after every ``slice_claims`` claims; returns it."""
        addresses = tuple(addresses)
        order = _sorted_order(addresses)
        n = len(order)
        # "M must be a prime number so that all values of skip are relatively prime to it." - §3.4
        if not is_prime(table_size) or table_size <= n:
            raise ValueError(
                f"maglev table_size={table_size} must be a prime larger than the "
                f"number of endpoints ({n})"
            )
        result = MaglevTable.__new__(MaglevTable)
        result._addresses, result._count = addresses, n
        if n == 0:
            result._table = memoryview(b"")
            return result
        size = table_size
        hashes = [_maglev_hashes(addresses[index] or "", size) for index in order]
        cursor = [offset for offset, _ in hashes]  # where each endpoint's next probe starts
        turns = [(rank, order[rank], skip) for rank, (_, skip) in enumerate(hashes)]
        taken = bytearray(size)
        table = array("H" if len(addresses) <= 0xFFFF else "I", [0]) * size
        # Endpoints take turns in address order, each claiming the next empty slot of its
        # preference list, permutation[i][j] = (offset + j * skip) mod M, walked incrementally
        # from its cursor; M claims fill the table.
        claims = cycle(turns)
        for done in range(0, size, slice_claims):
            if done:
                yield
            for rank, index, skip in islice(claims, min(slice_claims, size - done)):
                c = cursor[rank]
                while taken[c]:
                    c += skip
                    if c >= size:
                        c -= size
                taken[c] = 1
                table[c] = index
                cursor[rank] = c
        result._table = memoryview(table).toreadonly()
        return result

    @property
    def addresses(self) -> tuple[str | None, ...]:
        """The address in each slot (None: empty), as the table was built for."""
        return self._addresses

    def walk(self, request_hash: int) -> Iterator[int]:
        table = self._table
        if not table:
            return iter(())
        # table[h mod M] owns the key; the slots after it are the fallbacks.
        start = request_hash % len(table)
        return chain(table[start:], table[:start])

    @property
    def size(self) -> int:
        return len(self._table)

    def __repr__(self) -> str:
        return f"<MaglevTable [{self._count} endpoints, {self.size} slots]>"
