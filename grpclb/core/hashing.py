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
import sys
from array import array
from bisect import bisect_left
from collections.abc import Iterator, Sequence
from itertools import chain, cycle, islice
from typing import Protocol

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


def _sorted_order(addresses: Sequence[str]) -> list[int]:
    """Caller indices in address order, so tables never depend on input order."""
    return sorted(range(len(addresses)), key=lambda i: (addresses[i], i))


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
    one gives back only its own.
    """

    __slots__ = ("_count", "_owners", "_positions")

    def __init__(self, addresses: Sequence[str], points_per_endpoint: int = 1024) -> None:
        if points_per_endpoint < 1:
            raise ValueError(f"points_per_endpoint must be >= 1, got {points_per_endpoint}")
        order = _sorted_order(addresses)
        # Pack (position, address rank) into one int: a single sort then orders the
        # ring by position and breaks the (astronomically rare) ties by address.
        packed: list[int] = []
        for rank, index in enumerate(order):
            packed.extend(
                [(p << 32) | rank for p in _ring_positions(addresses[index], points_per_endpoint)]
            )
        packed.sort()
        self._positions = array("Q", [p >> 32 for p in packed])
        owners = array("I", [order[p & 0xFFFFFFFF] for p in packed])
        self._owners = memoryview(owners).toreadonly()
        self._count = len(addresses)

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
    """

    __slots__ = ("_count", "_table")

    def __init__(self, addresses: Sequence[str], table_size: int = 65537) -> None:
        n = len(addresses)
        # "M must be a prime number so that all values of skip are relatively prime to it." - §3.4
        if not is_prime(table_size) or table_size <= n:
            raise ValueError(
                f"maglev table_size={table_size} must be a prime larger than the "
                f"number of endpoints ({n})"
            )
        self._count = n
        if n == 0:
            self._table = memoryview(b"")
            return
        order = _sorted_order(addresses)
        size = table_size
        hashes = [_maglev_hashes(addresses[index], size) for index in order]
        cursor = [offset for offset, _ in hashes]  # where each endpoint's next probe starts
        turns = [(rank, order[rank], skip) for rank, (_, skip) in enumerate(hashes)]
        taken = bytearray(size)
        table = array("H" if n <= 0xFFFF else "I", [0]) * size
        # Endpoints take turns in address order, each claiming the next empty slot of its
        # preference list, permutation[i][j] = (offset + j * skip) mod M, walked incrementally
        # from its cursor; M claims fill the table.
        for rank, index, skip in islice(cycle(turns), size):
            c = cursor[rank]
            while taken[c]:
                c += skip
                if c >= size:
                    c -= size
            taken[c] = 1
            table[c] = index
            cursor[rank] = c
        self._table = memoryview(table).toreadonly()

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
