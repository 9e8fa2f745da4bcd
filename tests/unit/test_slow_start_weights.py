"""Slow start (Envoy's semantics) and the weighted pickers, on a fake clock."""

from __future__ import annotations

import itertools
import random
from collections import Counter
from dataclasses import dataclass

import grpc
import pytest

from grpclb.core.slowstart import weight_factor
from grpclb.core.weighted import (
    EdfRoundRobinPicker,
    WeightedLeastRequestPicker,
    WeightedRandomPicker,
    edf_schedule,
)
from tests.unit.test_balancer import CC, A, B, D, E, Harness

C = grpc.StatusCode
RAMPING = ["round_robin", "least_request", "random"]


@dataclass
class Pod:
    address: str
    in_flight: int = 0

    def __hash__(self) -> int:
        return hash(self.address)


# --- the formula ---


@pytest.mark.parametrize(
    ("elapsed", "aggression", "min_percent", "want"),
    [
        (0.0, 1.0, 10.0, 0.25),  # TimeFactor = max(t, 1) / window: 1 s of 4
        (0.5, 1.0, 10.0, 0.25),
        (2.0, 1.0, 10.0, 0.5),
        (3.0, 1.0, 10.0, 0.75),
        (4.0, 1.0, 10.0, 1.0),
        (9.0, 1.0, 10.0, 1.0),
        (1.0, 1.0, 50.0, 0.5),  # the minimum wins while the ramp is below it
        (2.0, 2.0, 10.0, 0.5**0.5),  # aggression 2: a square root, faster at first
        (1.0, 0.5, 10.0, 0.1),  # aggression 0.5: (1/4)^2 = 6.25 %, raised to the minimum
    ],
)
def test_weight_factor_is_envoys(
    elapsed: float, aggression: float, min_percent: float, want: float
) -> None:
    assert weight_factor(elapsed, 4.0, aggression, min_percent) == pytest.approx(want)


# --- the pickers ---


def test_edf_schedule_gives_each_its_share_smoothly() -> None:
    order = edf_schedule([1.0, 1.0, 0.25], 90)
    counts = Counter(order)
    assert counts == {0: 40, 1: 40, 2: 10}
    turns = [i for i, x in enumerate(order) if x == 2]
    gaps = [b - a for a, b in itertools.pairwise(turns)]
    assert max(gaps) <= 10  # spread through the cycle, not a burst


def test_edf_round_robin_is_exact_over_its_cycle_and_lock_free() -> None:
    pods = [Pod(a) for a in (A, B, CC, D, E)]
    picker = EdfRoundRobinPicker(pods, [1.0, 1.0, 1.0, 1.0, 0.25], random.Random(1))
    counts = Counter(picker.pick(None).address for _ in range(68 * 10))  # type: ignore[union-attr]
    assert counts == {A: 160, B: 160, CC: 160, D: 160, E: 40}


def test_weighted_random_follows_the_weights() -> None:
    pods = [Pod(a) for a in (A, B)]
    picker = WeightedRandomPicker(pods, [1.0, 0.25], random.Random(2))
    counts = Counter(picker.pick(None).address for _ in range(10_000))  # type: ignore[union-attr]
    assert counts[B] == pytest.approx(2000, rel=0.1)


def test_weighted_least_request_compares_calls_in_flight_per_weight() -> None:
    """Envoy's effective weight, weight / (in flight + 1): a quarter-weight pod wins only
    against a pod with more than three times its load."""
    pods = [Pod(a) for a in (A, B, CC, D, E)]
    picker = WeightedLeastRequestPicker(pods, [1, 1, 1, 1, 0.25], random.Random(3))
    counts = Counter(picker.pick(None).address for _ in range(2_000))  # type: ignore[union-attr]
    assert counts[E] == 0  # all idle: (0 + 1) / 0.25 = 4 loses to 1
    for pod in pods[:4]:
        pod.in_flight = 4  # (4 + 1) / 1 = 5 loses to 4
    counts = Counter(picker.pick(None).address for _ in range(2_000))  # type: ignore[union-attr]
    assert counts[E] / 2_000 == pytest.approx(0.4, abs=0.05)  # whenever it is drawn


def test_weighted_least_request_with_more_choices_prefers_the_idle() -> None:
    pods = [Pod(a, in_flight=3) for a in (A, B, CC, D)] + [Pod(E)]
    picker = WeightedLeastRequestPicker(pods, [1, 1, 1, 1, 0.5], random.Random(4), 5)
    assert {picker.pick(None).address for _ in range(50)} == {E}  # type: ignore[union-attr]


@pytest.mark.parametrize("bad", [[1.0], [1.0, 0.0], [1.0, float("nan")]])
def test_weighted_pickers_refuse_bad_weights(bad: list[float]) -> None:
    with pytest.raises(ValueError, match="weight"):
        WeightedRandomPicker([Pod(A), Pod(B)], bad, random.Random())


# --- the balancer ---


def ramp_harness(policy: str, **settings: object) -> Harness:
    h = Harness(policy=policy, slow_start_window="4s", **settings)
    h.resolve(A, B, CC, D)
    h.ready(A, B, CC, D)
    return h


def share(h: Harness, address: str, n: int = 4000) -> float:
    return Counter(h.picks(n))[address] / n


@pytest.mark.parametrize("policy", RAMPING)
def test_pods_present_at_creation_start_at_full_weight(policy: str) -> None:
    h = ramp_harness(policy)
    assert {r.weight for r in h.rows().values()} == {1.0}
    assert share(h, A) == pytest.approx(0.25, abs=0.04)


@pytest.mark.parametrize("policy", RAMPING)
def test_a_joining_pod_ramps_from_a_quarter_to_a_fair_share_over_the_window(policy: str) -> None:
    """round_robin and random follow the weight; least_request, whose calls here end at
    once (nothing in flight), sends a ramping pod nothing until it is full."""
    h = ramp_harness(policy)
    h.resolve(A, B, CC, D, E)
    h.ready(E)
    assert h.rows()[E].weight == pytest.approx(0.25)
    expected = 0.25 / 4.25 if policy != "least_request" else 0.0
    assert share(h, E) == pytest.approx(expected, abs=0.02)  # under half of 20 %
    h.run_timer(h.clock.now + 2.0)
    assert h.rows()[E].weight == pytest.approx(0.5, abs=0.06)
    expected = 0.5 / 4.5 if policy != "least_request" else 0.0
    assert share(h, E) == pytest.approx(expected, abs=0.03)
    h.run_timer(h.clock.now + 2.5)
    assert h.rows()[E].weight == 1.0
    assert share(h, E) == pytest.approx(0.2, abs=0.03)


def test_round_robin_is_exact_again_once_the_ramp_is_over() -> None:
    h = ramp_harness("round_robin")
    h.resolve(A, B, CC, D, E)
    h.ready(E)
    h.run_timer(h.clock.now + 5.0)
    assert Counter(h.picks(500)) == {A: 100, B: 100, CC: 100, D: 100, E: 100}


def test_the_snapshot_is_refreshed_every_tenth_of_the_window_while_a_pod_ramps() -> None:
    h = ramp_harness("round_robin")
    h.resolve(A, B, CC, D, E)
    h.ready(E)
    now = h.clock.now
    assert h.balancer.maintain() <= now + 0.4 + 1e-9
    h.run_timer(now + 5.0)
    assert h.balancer.maintain() > h.clock.now + 0.4  # settled: no more refreshes


def test_a_pod_back_from_ejection_ramps_up_again() -> None:
    h = ramp_harness("round_robin", consecutive_failures=3, base_ejection_time="10s")
    h.fail_on(A, 3)
    assert h.rows()[A].state == "ejected"
    for _ in range(30):  # the ejection ends at an interval at least 10 s later
        h.run_timer(h.clock.now + 1.0)
        if h.rows()[A].state == "ready":
            break
    assert h.rows()[A].state == "ready"
    assert h.rows()[A].weight == pytest.approx(0.25)
    h.run_timer(h.clock.now + 4.0)
    assert h.rows()[A].weight == 1.0


def test_slow_start_is_off_by_default_and_for_other_policies() -> None:
    h = Harness(policy="round_robin")
    h.resolve(A, B)
    h.ready(A, B)
    h.resolve(A, B, CC)
    h.ready(CC)
    assert h.rows()[CC].weight == 1.0
    first = Harness(policy="pick_first", slow_start_window="4s")
    first.resolve(A)
    first.resolve(A, B)
    assert first.rows()[B].weight == 1.0
