"""Weighted pickers, used only while some weight differs (slow start ramps).

Like every picker they are immutable and lock-free: the weights are fixed when
the snapshot is built, and the balancer rebuilds the snapshot as weights move.
When every weight is equal the plain pickers of ``grpclb.core.pickers`` are
used instead, so round_robin stays exact and nothing pays for weights.
"""

from __future__ import annotations

import bisect
import heapq
import itertools
import math
import random
from collections.abc import Sequence
from typing import Generic

from grpclb.core.pickers import E

__all__ = [
    "EdfRoundRobinPicker",
    "WeightedLeastRequestPicker",
    "WeightedRandomPicker",
    "edf_schedule",
]

# A schedule long enough that a pod at 1/4096 of the total still gets a slot,
# short enough to build in a few milliseconds at a thousand pods.
_MIN_SCHEDULE = 4096


def _check(endpoints: Sequence[E], weights: Sequence[float]) -> None:
    if len(weights) != len(endpoints):
        raise ValueError(f"{len(weights)} weights for {len(endpoints)} endpoints; need one each")
    if any(not (w > 0 and math.isfinite(w)) for w in weights):
        raise ValueError(f"weights must be finite and > 0, got {list(weights)}")


def edf_schedule(weights: Sequence[float], length: int) -> list[int]:
    """``length`` picks of Envoy's earliest-deadline-first scheduler, as indexes.

    As in Envoy's EDF scheduler, an entry's next deadline is its last one plus
    1 / weight, and the earliest deadline is picked (ties by index). The
    result interleaves pods smoothly: a pod at a quarter weight gets every
    fourth-or-so turn, not a burst.
    """
    heap = [(1.0 / w, i) for i, w in enumerate(weights)]
    heapq.heapify(heap)
    out = []
    for _ in range(length):
        deadline, i = heap[0]
        out.append(i)
        heapq.heapreplace(heap, (deadline + 1.0 / weights[i], i))
    return out


def schedule_length(weights: Sequence[float]) -> int:
    """Picks in one cycle: enough for every pod's share to show, bounded."""
    n = len(weights)
    wanted = math.ceil(4 * sum(weights) / min(weights))
    return max(n, min(wanted, max(_MIN_SCHEDULE, 8 * n)))


class EdfRoundRobinPicker(Generic[E]):
    """round_robin with unequal weights: a rotation over a precomputed EDF schedule.

    The schedule is built once per snapshot and walked with the same lock-free
    counter as ``RoundRobinPicker``, from a random start.
    """

    __slots__ = ("_counter", "_n", "_schedule", "_size")

    def __init__(self, endpoints: Sequence[E], weights: Sequence[float], rng: random.Random):
        _check(endpoints, weights)
        self._n = len(endpoints)
        order = edf_schedule(weights, schedule_length(weights)) if self._n else []
        self._schedule = tuple(endpoints[i] for i in order)
        self._size = len(self._schedule)
        self._counter = itertools.count(rng.randrange(self._size) if self._size else 0)

    def pick(self, request_hash: int | None) -> E | None:
        if not self._size:
            return None
        return self._schedule[next(self._counter) % self._size]

    def __repr__(self) -> str:
        return f"<EdfRoundRobinPicker [{self._n} endpoints, schedule of {self._size}]>"


class _Cumulative(Generic[E]):
    """Endpoints with cumulative weights, for draws in proportion to weight."""

    __slots__ = ("_cumulative", "_endpoints", "_n", "_random", "_total")

    def __init__(self, endpoints: Sequence[E], weights: Sequence[float], rng: random.Random):
        _check(endpoints, weights)
        self._endpoints = tuple(endpoints)
        self._n = len(self._endpoints)
        self._cumulative = tuple(itertools.accumulate(weights))
        self._total = self._cumulative[-1] if self._n else 0.0
        self._random = rng.random

    def _draw(self) -> int:
        i = bisect.bisect_right(self._cumulative, self._random() * self._total)
        return min(i, self._n - 1)  # float rounding at the very top


class WeightedRandomPicker(_Cumulative[E]):
    """random with unequal weights: each pod in proportion to its weight."""

    __slots__ = ()

    def pick(self, request_hash: int | None) -> E | None:
        if not self._n:
            return None
        return self._endpoints[self._draw()]

    def __repr__(self) -> str:
        return f"<WeightedRandomPicker [{self._n} endpoints]>"


class WeightedLeastRequestPicker(Generic[E]):
    """least_request with unequal weights: distinct random candidates, Envoy's load per weight.

    Candidates are drawn as the plain picker draws them; the winner has the
    highest effective weight, Envoy least request's weight / (active requests + 1)
    ** bias, with Envoy's default bias of 1.0. A pod at a quarter
    weight thus wins only against a pod with four times its calls in flight: at
    high concurrency its calls in flight follow its weight; at low concurrency
    it gets few calls until its weight nears a full one. Ties go to the first drawn.
    """

    __slots__ = ("_choices", "_endpoints", "_inverse", "_n", "_random")

    def __init__(
        self,
        endpoints: Sequence[E],
        weights: Sequence[float],
        rng: random.Random,
        choice_count: int = 2,
    ) -> None:
        _check(endpoints, weights)
        if choice_count < 2:
            raise ValueError(f"least_request choice_count must be >= 2, got {choice_count}")
        self._endpoints = tuple(endpoints)
        self._inverse = tuple(1.0 / w for w in weights)
        self._n = len(self._endpoints)
        self._choices = min(choice_count, self._n)
        self._random = rng.random

    def pick(self, request_hash: int | None) -> E | None:
        n = self._n
        if n < 2:
            return self._endpoints[0] if n else None
        endpoints, inverse, rand = self._endpoints, self._inverse, self._random
        i = int(rand() * n)
        best = endpoints[i]
        best_load = (best.in_flight + 1) * inverse[i]
        drawn = [i]
        while len(drawn) < self._choices:  # distinct draws; repeats are rare and redrawn
            j = int(rand() * n)
            if j in drawn:
                continue
            drawn.append(j)
            load = (endpoints[j].in_flight + 1) * inverse[j]
            if load < best_load:
                best, best_load = endpoints[j], load
        return best

    def __repr__(self) -> str:
        return f"<WeightedLeastRequestPicker [{self._n} endpoints, choice_count={self._choices}]>"
