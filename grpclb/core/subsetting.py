"""Subsetting: which of a big fleet's pods one client channel connects to.

With N clients and M pods, connecting everyone to everyone costs N x M HTTP/2
connections. A subset of ``subset_size`` pods per client bounds that at
N x subset_size, as long as the rule spreads clients evenly over the pods and
does not reshuffle them whenever one pod is replaced. Two rules, both pure
functions of (addresses, settings), so no client needs to coordinate:

*Rendezvous* (the default), as gRFC A68's ``random_subsetting``: each client
ranks every pod by a hash of (its seed, the pod's address) and keeps the first
``subset_size``. With a seed random per process, pods get clients binomially:
even on average, with a spread. "If a single server is either added or removed
..., every client will update at most 1 entry in its subset" - A68; so
replacing one pod (a removal and an addition) changes at most two entries, and
only in the clients that held the old pod or rank the new one high enough:
about 2 x subset_size / M of them.

*Deterministic* (``subset_client_index`` set), after Google's SRE book,
"Deterministic subsetting" (chapter 20): clients are numbered 0, 1, 2, ...;
each *round* of M // subset_size consecutive clients shares one ordering of the
pods and splits it into disjoint subsets, so every pod gets the same number of
clients to within one. The book's ordering is a seeded shuffle, which a change
of the pod list reshuffles for every client; here the round's ordering is a
ranking by hash(seed, round, address) instead, so removing or adding one pod
shifts each later subset of the round by one position: at most two entries
change per client, but in up to every client of the round. The trade-off:
exact balance, in exchange for each client knowing a distinct index (e.g. a
StatefulSet ordinal) and more clients touched per change than rendezvous.
"""

from __future__ import annotations

import heapq
import os
import random
from collections.abc import Collection
from hashlib import blake2b
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from grpclb.config.settings import Settings

__all__ = ["Subsetter", "deterministic_subset", "process_seed", "rendezvous_subset"]


def _new_seed() -> int:
    return random.SystemRandom().getrandbits(63)


_process_seed = _new_seed()


def _reseed_after_fork() -> None:
    # Forked workers (a pre-fork server's) must not all pick the parent's subset.
    global _process_seed
    _process_seed = _new_seed()


os.register_at_fork(after_in_child=_reseed_after_fork)


def process_seed() -> int:
    """This process's subsetting seed: random per process (A68), new in a forked child."""
    return _process_seed


def _score(key: bytes, address: str) -> bytes:
    """A pod's rank for one seed: 64 bits of keyed blake2b, the same in every process."""
    return blake2b(address.encode(), digest_size=8, key=key).digest()


def _key(*parts: int) -> bytes:
    return b"".join(p.to_bytes(8, "big", signed=False) for p in parts)


def rendezvous_subset(addresses: Collection[str], size: int, seed: int) -> set[str]:
    """The ``size`` addresses ranking highest for ``seed`` (all of them when fewer)."""
    if len(addresses) <= size:
        return set(addresses)
    key = _key(seed & (2**64 - 1))
    return set(heapq.nsmallest(size, addresses, key=lambda a: (_score(key, a), a)))


def deterministic_subset(
    addresses: Collection[str], size: int, client_index: int, seed: int = 0
) -> set[str]:
    """Client ``client_index``'s subset: exactly balanced across consecutive indices."""
    if len(addresses) <= size:
        return set(addresses)
    # "subset_count = len(backends) / subset_size; round = client_id / subset_count" - SRE book
    subsets_per_round = len(addresses) // size
    round_, position = divmod(client_index, subsets_per_round)
    key = _key(seed & (2**64 - 1), round_)
    ranked = sorted(addresses, key=lambda a: (_score(key, a), a))
    start = position * size
    return set(ranked[start : start + size])


class Subsetter:
    """The configured rule, applied to each DNS answer by the balancer."""

    def __init__(self, settings: Settings) -> None:
        self.size = settings.subset_size
        self.client_index = settings.subset_client_index
        if settings.subset_seed is not None:
            self.seed = settings.subset_seed
        else:  # a shared fixed seed keeps a numbered fleet balanced; else one per process
            self.seed = 0 if self.client_index is not None else process_seed()

    @property
    def enabled(self) -> bool:
        return self.size is not None

    def choose(self, addresses: Collection[str]) -> set[str]:
        """The pods to connect to out of a DNS answer."""
        if self.size is None:
            return set(addresses)
        if self.client_index is not None:
            return deterministic_subset(addresses, self.size, self.client_index, self.seed)
        return rendezvous_subset(addresses, self.size, self.seed)

    def __repr__(self) -> str:
        if self.size is None:
            return "<Subsetter off>"
        mode = "rendezvous" if self.client_index is None else f"client {self.client_index}"
        return f"<Subsetter {self.size} pods, {mode}>"
