"""Pickers: exact rotation, P2C statistics, hash fall-through, retry avoidance.

Every test seeds its own random.Random, so the statistical assertions are
deterministic; their tolerances are still set at several standard deviations
so that a change of seed does not break them.
"""

from __future__ import annotations

import random
import sys
import threading
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from math import comb
from typing import Any

import pytest

from grpclb.core.hashing import MaglevTable, RingHashTable, hash_key
from grpclb.core.pickers import (
    HashPicker,
    LeastRequestPicker,
    Picker,
    PickFirstPicker,
    RandomPicker,
    RoundRobinPicker,
    pick_avoiding,
)


@dataclass(eq=False)  # identity equality and hashing, like the balancer's endpoints
class Ep:
    address: str
    in_flight: int = 0


def make(n: int, loads: list[int] | None = None) -> list[Ep]:
    return [Ep(f"10.0.0.{i}:50051", loads[i] if loads else 0) for i in range(n)]


class FixedWalkTable:
    """A HashTable whose walk is given: isolates HashPicker from the real tables."""

    def __init__(self, walk: list[int], size: int) -> None:
        self._walk = walk
        self._size = size

    def walk(self, request_hash: int) -> Iterator[int]:
        return iter(self._walk)

    @property
    def size(self) -> int:
        return self._size


class EndlessTable:
    """A misbehaving table whose walk never ends: a pick must still return."""

    def walk(self, request_hash: int) -> Iterator[int]:
        while True:
            yield 0

    @property
    def size(self) -> int:
        return 4


# --- round robin ---


def test_round_robin_rotates_exactly_in_order() -> None:
    eps = make(5)
    picker = RoundRobinPicker(eps, random.Random(1))
    picks = [picker.pick(None) for _ in range(1000)]
    assert Counter(p.address for p in picks if p) == {e.address: 200 for e in eps}
    assert picks[0] is not None
    first = eps.index(picks[0])
    assert picks[:10] == [eps[(first + i) % 5] for i in range(10)]


def test_round_robin_start_offset_comes_from_rng() -> None:
    eps = make(5)
    starts = {RoundRobinPicker(eps, random.Random(seed)).pick(None) for seed in range(50)}
    assert starts == set(eps)  # not every client starts on the first pod
    same = [RoundRobinPicker(eps, random.Random(7)).pick(None) for _ in range(3)]
    assert same[0] is same[1] is same[2]  # and the start is reproducible from the seed


def test_round_robin_concurrent_picks_stay_exact() -> None:
    eps = make(5)
    picker = RoundRobinPicker(eps, random.Random(2))
    counts: list[Counter[str]] = []
    barrier = threading.Barrier(8)

    def worker() -> None:
        local: Counter[str] = Counter()
        barrier.wait()
        for _ in range(5000):
            e = picker.pick(None)
            assert e is not None
            local[e.address] += 1
        counts.append(local)

    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # force many thread switches mid-loop
    try:
        threads = [threading.Thread(target=worker) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        sys.setswitchinterval(old)
    total = sum(counts, Counter())
    assert total == {e.address: 8000 for e in eps}


@pytest.mark.parametrize(
    "picker",
    [
        RoundRobinPicker([], random.Random(0)),
        RandomPicker([], random.Random(0)),
        PickFirstPicker([]),
        LeastRequestPicker([], random.Random(0)),
        LeastRequestPicker([], random.Random(0), choice_count=5),
    ],
    ids=["round_robin", "random", "pick_first", "least_request", "least_request_5"],
)
def test_empty_snapshot_picks_none(picker: Picker[Ep]) -> None:
    assert picker.pick(None) is None
    assert picker.pick(123) is None


def test_reprs_summarise_state() -> None:
    eps = make(3)
    assert repr(RoundRobinPicker(eps, random.Random(0))) == "<RoundRobinPicker [3 endpoints]>"
    assert repr(RandomPicker(eps, random.Random(0))) == "<RandomPicker [3 endpoints]>"
    assert repr(PickFirstPicker(eps)) == "<PickFirstPicker [3 endpoints, first=10.0.0.0:50051]>"
    assert (
        repr(LeastRequestPicker(eps, random.Random(0)))
        == "<LeastRequestPicker [3 endpoints, choice_count=2]>"
    )
    table = RingHashTable([e.address for e in eps], 16)
    hp = HashPicker(table, eps, [True, False, True], random.Random(0))
    assert repr(hp) == "<HashPicker [2/3 usable, <RingHashTable [3 endpoints, 48 points]>]>"


# --- random and pick_first ---


def test_random_is_roughly_uniform_and_seeded() -> None:
    eps = make(10)
    picker = RandomPicker(eps, random.Random(3))
    counts = Counter(picker.pick(None) for _ in range(10_000))
    assert set(counts) == set(eps)
    assert all(850 <= c <= 1150 for c in counts.values()), counts  # 1000 +- ~5 sigma
    a = RandomPicker(eps, random.Random(9))
    b = RandomPicker(eps, random.Random(9))
    assert [a.pick(None) for _ in range(20)] == [b.pick(None) for _ in range(20)]


def test_pick_first_always_returns_the_first() -> None:
    eps = make(4)
    picker = PickFirstPicker(eps)
    assert all(picker.pick(h) is eps[0] for h in (None, 0, 2**63))


# --- least request ---


def test_least_request_rejects_choice_count_below_two() -> None:
    for bad in (1, 0, -3):
        with pytest.raises(ValueError, match=f"choice_count must be >= 2, got {bad}"):
            LeastRequestPicker(make(3), random.Random(0), choice_count=bad)


def test_least_request_single_endpoint() -> None:
    eps = make(1, [7])
    for k in (2, 3):
        assert LeastRequestPicker(eps, random.Random(0), k).pick(None) is eps[0]


def test_least_request_samples_distinct_endpoints() -> None:
    # Sampling with replacement (Envoy, A48) would sometimes draw the stuck pod twice.
    stuck_pair = make(2, [100, 0])
    picker = LeastRequestPicker(stuck_pair, random.Random(4))
    assert all(picker.pick(None) is stuck_pair[1] for _ in range(2000))
    many = make(10, [100] + [0] * 9)
    for k in (2, 3, 6):
        picker = LeastRequestPicker(many, random.Random(k), choice_count=k)
        assert all(picker.pick(None) is not many[0] for _ in range(2000))


def expected_least_of_k(n: int, k: int) -> list[float]:
    """P(the endpoint with the r-th lowest distinct load wins) when sampling k of n."""
    return [comb(n - 1 - r, k - 1) / comb(n, k) for r in range(n)]


@pytest.mark.parametrize("k", [2, 3, 6])  # 2: P2C path; 3: redraw path; 6: shuffle path
def test_least_request_distribution_matches_sampling_k_distinct(k: int) -> None:
    eps = make(10, list(range(10)))
    picker = LeastRequestPicker(eps, random.Random(5), choice_count=k)
    picks = 40_000
    counts = Counter(picker.pick(None) for _ in range(picks))
    want = expected_least_of_k(10, k)
    for r, e in enumerate(eps):
        assert abs(counts[e] / picks - want[r]) < 0.012, (r, counts[e] / picks, want[r])
    # The k - 1 busiest can never win: some sampled endpoint is always less loaded.
    assert all(counts[e] == 0 for e in eps[10 - k + 1 :])


def test_least_request_p2c_prefers_lower_in_flight() -> None:
    eps = make(10, list(range(10)))
    picker = LeastRequestPicker(eps, random.Random(6))
    counts = Counter(picker.pick(None) for _ in range(20_000))
    # P2C over loads 0..9: P(load r) = 2 (9 - r) / 90, so 0.2 for the idlest, 0 for the busiest.
    assert counts[eps[9]] == 0
    assert [counts[e] for e in eps[:9]] == sorted((counts[e] for e in eps[:9]), reverse=True)
    assert abs(counts[eps[0]] / 20_000 - 0.2) < 0.015


@pytest.mark.parametrize("k", [5, 10])
def test_least_request_choice_count_at_least_n_takes_global_min(k: int) -> None:
    eps = make(5, [3, 1, 4, 1, 5])
    picker = LeastRequestPicker(eps, random.Random(8), choice_count=k)
    counts = Counter(picker.pick(None) for _ in range(2000))
    assert set(counts) == {eps[1], eps[3]}  # both minima, ties broken at random
    assert 800 <= counts[eps[1]] <= 1200


def test_least_request_ties_are_random() -> None:
    eps = make(4)
    picker = LeastRequestPicker(eps, random.Random(10))
    counts = Counter(picker.pick(None) for _ in range(8000))
    assert all(1800 <= counts[e] <= 2200 for e in eps), counts


def test_least_request_reads_live_in_flight() -> None:
    eps = make(2)
    picker = LeastRequestPicker(eps, random.Random(11))
    eps[0].in_flight = 5  # the balancer mutates counts after the picker is built
    assert all(picker.pick(None) is eps[1] for _ in range(100))
    eps[1].in_flight = 9
    assert all(picker.pick(None) is eps[0] for _ in range(100))


# --- hash picker ---


def test_hash_picker_without_hash_spreads_over_usable() -> None:
    eps = make(5)
    usable = [True, False, True, False, True]
    table = MaglevTable([e.address for e in eps], 101)
    picker = HashPicker(table, eps, usable, random.Random(12))
    counts = Counter(picker.pick(None) for _ in range(3000))
    assert set(counts) == {eps[0], eps[2], eps[4]}
    assert all(850 <= c <= 1150 for c in counts.values()), counts


def test_hash_picker_returns_the_owner_and_skips_unusable() -> None:
    eps = make(4)
    table = FixedWalkTable([2, 2, 3, 0, 1], size=5)
    all_up = HashPicker(table, eps, [True] * 4, random.Random(0))
    assert all_up.pick(42) is eps[2]
    owner_down = HashPicker(table, eps, [True, True, False, True], random.Random(0))
    assert owner_down.pick(42) is eps[3]
    two_down = HashPicker(table, eps, [True, True, False, False], random.Random(0))
    assert two_down.pick(42) is eps[0]


@pytest.mark.parametrize("kind", ["ring", "maglev"])
def test_hash_picker_flap_moves_only_the_flapping_endpoints_keys(kind: str) -> None:
    eps = make(6)
    addresses = [e.address for e in eps]
    table = RingHashTable(addresses, 256) if kind == "ring" else MaglevTable(addresses, 1009)
    up = HashPicker(table, eps, [True] * 6, random.Random(0))
    down = HashPicker(table, eps, [True, True, True, False, True, True], random.Random(0))
    for i in range(2000):
        h = hash_key(f"user-{i}")
        before = up.pick(h)
        after = down.pick(h)
        assert before is not None and after is not None
        assert after is not eps[3]
        if before is not eps[3]:
            assert after is before
        else:  # falls through to the next endpoint on the walk
            walk = [i for i in table.walk(h) if i != 3]
            assert after is eps[walk[0]]


def test_hash_picker_nothing_usable_is_none() -> None:
    eps = make(3)
    table = RingHashTable([e.address for e in eps], 8)
    picker = HashPicker(table, eps, [False] * 3, random.Random(0))
    assert picker.pick(hash_key("k")) is None
    assert picker.pick(None) is None
    empty: HashPicker[Ep] = HashPicker(RingHashTable([]), [], [], random.Random(0))
    assert empty.pick(1) is None


def test_hash_picker_bounds_a_walk_that_never_ends() -> None:
    eps = make(2)
    picker = HashPicker(EndlessTable(), eps, [False, True], random.Random(0))
    assert picker.pick(7) is eps[1]  # gave up on the walk, spread over the usable


def test_hash_picker_requires_one_flag_per_endpoint() -> None:
    with pytest.raises(ValueError, match="2 flags for 3 endpoints"):
        HashPicker(FixedWalkTable([], 0), make(3), [True, True], random.Random(0))


# --- pick_avoiding ---


def test_pick_avoiding_keeps_a_pick_not_yet_tried() -> None:
    eps = make(4)
    picker = PickFirstPicker(eps)
    assert pick_avoiding(picker, eps, None, set(), random.Random(0)) is eps[0]
    assert pick_avoiding(picker, eps, None, {eps[2]}, random.Random(0)) is eps[0]


def test_pick_avoiding_goes_to_a_pod_not_yet_tried() -> None:
    eps = make(4)
    picker = PickFirstPicker(eps)
    rng = random.Random(13)
    counts = Counter(pick_avoiding(picker, eps, None, {eps[0], eps[1]}, rng) for _ in range(2000))
    assert set(counts) == {eps[2], eps[3]}
    assert 850 <= counts[eps[2]] <= 1150  # uniform among the untried


def test_pick_avoiding_falls_back_to_the_normal_pick_when_all_tried() -> None:
    eps = make(3)
    picker = PickFirstPicker(eps)
    assert pick_avoiding(picker, eps, None, set(eps), random.Random(0)) is eps[0]


def test_pick_avoiding_none_when_picker_has_nothing() -> None:
    assert (
        pick_avoiding(RoundRobinPicker([], random.Random(0)), [], None, set(), random.Random(0))
        is None
    )


def test_pick_avoiding_with_hash_retries_elsewhere() -> None:
    eps = make(5)
    table = RingHashTable([e.address for e in eps], 64)
    picker = HashPicker(table, eps, [True] * 5, random.Random(0))
    h = hash_key("session-1")
    first = picker.pick(h)
    assert first is not None
    retry = pick_avoiding(picker, eps, h, [first], random.Random(1))  # any Collection works
    assert retry is not None and retry is not first


def test_a_maglev_table_outgrown_by_its_pods_grows_to_a_prime() -> None:
    from grpclb.config.settings import Settings
    from grpclb.core.factory import PickerFactory, maglev_size
    from grpclb.core.hashing import is_prime

    assert maglev_size(65537, 10) == 65537
    grown = maglev_size(3, 3)
    assert grown > 300 and is_prime(grown)
    settings = Settings.load({"policy": "maglev", "hash_key": "k", "maglev_table_size": 3})
    pods = make(3)
    factory: PickerFactory[Any] = PickerFactory(settings, random.Random(1))
    factory.set_members([p.address for p in pods])
    factory.build_table_now()
    picker = factory.build(pods, pods)
    assert isinstance(picker, HashPicker)
    assert {picker.pick(h) for h in range(200)} == set(pods)
