"""Pickers: immutable per-snapshot answers to "which endpoint for this call".

The balancer builds a new picker whenever the set of usable endpoints changes
and swaps it in whole (grpc-go's picker model), so a picker never needs a lock:
its fields never change after ``__init__``. A pick never blocks and never does
I/O. State that must outlive one picker, such as each endpoint's in-flight
count, lives on the endpoint objects the balancer owns; pickers only read it.

Random choices use ``int(rng.random() * n)``: it costs less than half of
``rng.randrange(n)`` and is always below ``n`` for ``n < 2**53``; its bias (about
n / 2**53) is far below anything a load balancer could notice.
"""

from __future__ import annotations

import itertools
import logging
import random
from collections.abc import Collection, Sequence
from typing import TYPE_CHECKING, Any, Generic, Protocol, TypeVar

from grpclb.core.hashing import HashTable

if TYPE_CHECKING:
    pass

log = logging.getLogger("grpclb")

__all__ = [
    "E",
    "HashPicker",
    "LeastRequestPicker",
    "PickFirstPicker",
    "PickableEndpoint",
    "Picker",
    "RandomPicker",
    "RoundRobinPicker",
    "pick_avoiding",
]


class PickableEndpoint(Protocol):
    """What a picker reads from an endpoint; the balancer's endpoint type has more."""

    @property
    def address(self) -> str:
        """The pod's "ip:port"."""
        ...

    @property
    def in_flight(self) -> int:
        """Calls currently in flight; written by the balancer, read by pickers."""
        ...


E = TypeVar("E", bound=PickableEndpoint)
T = TypeVar("T")
E_co = TypeVar("E_co", bound=PickableEndpoint, covariant=True)


class Picker(Protocol[E_co]):
    """An immutable choice function over one snapshot of endpoints."""

    def pick(self, request_hash: int | None) -> E_co | None:
        """The endpoint for one call, or None only when there is nothing to pick.

        request_hash is the 64-bit hash of the call's hash-key value (or None);
        only hash pickers look at it.
        """
        ...


class RoundRobinPicker(Generic[E]):
    """Rotates over the endpoints in order, from a random start.

    The start is drawn from rng, as gRPC's round_robin does, so that many
    clients built at the same moment do not all hit the first pod together.
    """

    __slots__ = ("_counter", "_endpoints", "_n")

    def __init__(self, endpoints: Sequence[E], rng: random.Random) -> None:
        self._endpoints = tuple(endpoints)
        self._n = len(self._endpoints)
        # next() on itertools.count is a single C call, atomic under the GIL: concurrent
        # picks never share or skip a ticket, and the hot path takes no lock.
        self._counter = itertools.count(rng.randrange(self._n) if self._n else 0)

    def pick(self, request_hash: int | None) -> E | None:
        n = self._n
        if not n:
            return None
        return self._endpoints[next(self._counter) % n]

    def __repr__(self) -> str:
        return f"<RoundRobinPicker [{self._n} endpoints]>"


class RandomPicker(Generic[E]):
    """Uniform random choice: no shared state at all between concurrent picks."""

    __slots__ = ("_endpoints", "_n", "_random")

    def __init__(self, endpoints: Sequence[E], rng: random.Random) -> None:
        self._endpoints = tuple(endpoints)
        self._n = len(self._endpoints)
        self._random = rng.random

    def pick(self, request_hash: int | None) -> E | None:
        if not self._n:
            return None
        return self._endpoints[int(self._random() * self._n)]

    def __repr__(self) -> str:
        return f"<RandomPicker [{self._n} endpoints]>"


class PickFirstPicker(Generic[E]):
    """Always the first usable endpoint; the balancer passes them in resolver order."""

    __slots__ = ("_first", "_n")

    def __init__(self, endpoints: Sequence[E]) -> None:
        self._first = endpoints[0] if endpoints else None
        self._n = len(endpoints)

    def pick(self, request_hash: int | None) -> E | None:
        return self._first

    def __repr__(self) -> str:
        first = self._first.address if self._first is not None else None
        return f"<PickFirstPicker [{self._n} endpoints, first={first}]>"


class LeastRequestPicker(Generic[E]):
    """Envoy's "all weights equal" least request: the fewest in flight among a random few.

    Candidates are sampled *distinct*, unlike Envoy and A48's pseudo-code: "the random
    selection will allow a subchannel to be sampled multiple times ... even a frozen
    endpoint would never fully be excluded" - gRFC A48. With distinct samples a stuck
    pod (its in-flight count never drops) loses every comparison it is part of.
    """

    __slots__ = ("_choice_count", "_choices", "_endpoints", "_n", "_random")

    def __init__(self, endpoints: Sequence[E], rng: random.Random, choice_count: int = 2) -> None:
        # "If set to < 2, the config will be rejected" - grpc-go leastrequest (A48)
        if choice_count < 2:
            raise ValueError(f"least_request choice_count must be >= 2, got {choice_count}")
        self._choice_count = choice_count
        self._endpoints = tuple(endpoints)
        self._n = len(self._endpoints)
        # Sampling as many as there are endpoints considers them all, in random order.
        self._choices = min(choice_count, self._n)
        self._random = rng.random

    def pick(self, request_hash: int | None) -> E | None:
        endpoints = self._endpoints
        n = self._n
        if self._choices == 2:
            # Power of two choices, distinct without a retry loop: draw the second
            # from the n - 1 endpoints left and skip over the first.
            rand = self._random
            i = int(rand() * n)
            j = int(rand() * (n - 1))
            if j >= i:
                j += 1
            first = endpoints[i]
            second = endpoints[j]
            # Ties go to the first sampled, which is itself random.
            return second if second.in_flight < first.in_flight else first
        if self._choices > 2:
            return self._pick_among_many()
        return endpoints[0] if n else None

    def _pick_among_many(self) -> E:
        """choice_count > 2: draw distinct candidates one at a time, keep the least loaded.

        Only a strictly lower count replaces the best so far, so the earliest drawn
        wins ties and ties are broken at random. (rng.sample costs several times more.)
        """
        endpoints = self._endpoints
        n = self._n
        k = self._choices
        rand = self._random
        if k * 2 <= n:
            # Few out of many: redraw the rare repeats and copy nothing.
            first = int(rand() * n)
            best = endpoints[first]
            drawn = [first]
            while len(drawn) < k:
                i = int(rand() * n)
                if i not in drawn:
                    drawn.append(i)
                    if endpoints[i].in_flight < best.in_flight:
                        best = endpoints[i]
            return best
        # Most of them: the first k steps of a Fisher-Yates shuffle of a private copy.
        pool = list(endpoints)
        j = int(rand() * n)
        best = pool[j]
        pool[j] = pool[0]
        for i in range(1, k):
            j = i + int(rand() * (n - i))
            candidate = pool[j]
            pool[j] = pool[i]
            if candidate.in_flight < best.in_flight:
                best = candidate
        return best

    def __repr__(self) -> str:
        return f"<LeastRequestPicker [{self._n} endpoints, choice_count={self._choice_count}]>"


class HashPicker(Generic[E]):
    """Consistent-hash choice over a table built from *all* endpoints, usable or not.

    Keeping unusable endpoints in the table means a flapping connection does not
    move anyone else's keys: its own keys fall through to the next entry of the
    table's walk while it is down and come back when it recovers.

    ``endpoints`` is indexed like the table's walk (by slot); an empty slot is
    None. ``spread`` is where calls without a key go: by default the usable
    endpoints of the table, but the balancer passes every usable pod, so a pod
    the table does not hold yet (it is being rebuilt) serves keyless calls.
    """

    __slots__ = ("_endpoints", "_max_steps", "_random", "_table", "_usable", "_usable_endpoints")

    def __init__(
        self,
        table: HashTable,
        endpoints: Sequence[E | None],
        usable: Sequence[bool],
        rng: random.Random,
        spread: Sequence[E] | None = None,
    ) -> None:
        if len(usable) != len(endpoints):
            raise ValueError(
                f"usable has {len(usable)} flags for {len(endpoints)} endpoints; "
                "need one per endpoint"
            )
        self._table = table
        self._endpoints = tuple(endpoints)
        self._usable = tuple(
            bool(u) and e is not None for e, u in zip(endpoints, usable, strict=True)
        )
        if spread is None:
            spread = [e for e, u in zip(self._endpoints, self._usable, strict=True) if u and e]
        self._usable_endpoints = tuple(spread)
        # A full cycle of the table visits every endpoint index; never walk further.
        self._max_steps = max(table.size, len(self._endpoints))
        self._random = rng.random

    def pick(self, request_hash: int | None) -> E | None:
        candidates = self._usable_endpoints
        if not candidates:
            return None
        if request_hash is not None:
            usable = self._usable
            for step, index in enumerate(self._table.walk(request_hash)):
                if usable[index]:
                    return self._endpoints[index]
                if step >= self._max_steps:
                    break
        # No hash key (or a table whose walk missed every usable endpoint): spread the
        # call at random, as Envoy and gRPC's ring_hash do for calls without a hash.
        return candidates[int(self._random() * len(candidates))]

    def __repr__(self) -> str:
        return (
            f"<HashPicker [{sum(self._usable)}/{sum(e is not None for e in self._endpoints)} "
            f"usable, {self._table!r}]>"
        )


def pick_avoiding(
    picker: Picker[E],
    endpoints: Sequence[E],
    request_hash: int | None,
    avoid: Collection[E],
    rng: random.Random,
) -> E | None:
    """Pick for a retry: a pod not yet tried when one exists, else the normal pick.

    endpoints are the fallback candidates (the usable endpoints of the snapshot
    the picker was built from). Membership in avoid is the collection's own
    ``in``; a set of endpoint objects is the natural choice. Returns None only
    when the picker itself has nothing to pick.
    """
    chosen = picker.pick(request_hash)
    if chosen is None or not avoid or chosen not in avoid:
        return chosen
    fresh = [e for e in endpoints if e not in avoid]
    if not fresh:
        return chosen
    return fresh[int(rng.random() * len(fresh))]


class _NoPicker:
    """The picker of an empty set: every pick says there is no pod."""

    def pick(self, request_hash: int | None) -> None:
        return None


NO_PICKER: Picker[Any] = _NoPicker()
