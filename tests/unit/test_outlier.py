"""Outlier detection on simulated time (Envoy / gRFC A50 semantics, issue 3).

The detector is pure: each test hands it the time and the pods' records and
fires the interval by hand, as Envoy's tests do, then asserts on the records'
named fields (``ejected``, ``ejection_multiplier``, ``ejections``).
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence

import pytest

from grpclb.config.settings import Settings
from grpclb.core.outlier import (
    OutlierDetector,
    OutlierRecord,
    Verdict,
    failure_percentage_outliers,
    success_rate_outliers,
)

INTERVAL = 10.0  # the default ejection_interval
BASE = 30.0  # the default base_ejection_time


def detector(**overrides: object) -> OutlierDetector:
    return OutlierDetector(Settings.load(overrides, environ={}))


def pods(n: int) -> list[OutlierRecord]:
    return [OutlierRecord() for _ in range(n)]


def fail(
    det: OutlierDetector,
    record: OutlierRecord,
    records: Sequence[OutlierRecord],
    now: float,
    n: int,
) -> list[Verdict]:
    return [det.record(record, True, now, records) for _ in range(n)]


def eject_consecutive(
    det: OutlierDetector, record: OutlierRecord, records: Sequence[OutlierRecord], now: float
) -> None:
    fail(det, record, records, now, det.settings.consecutive_failures)
    assert record.ejected


def with_outcomes(outcomes: Sequence[tuple[int, int]]) -> list[OutlierRecord]:
    """Records with (successes, failures) already counted in this interval."""
    return [OutlierRecord(successes=s, failures=f) for s, f in outcomes]


def indices(records: Sequence[OutlierRecord], found: Sequence[OutlierRecord]) -> list[int]:
    """Positions of found records, by identity (equal records are still distinct pods)."""
    return [i for i, r in enumerate(records) if any(r is f for f in found)]


def tick_until(
    det: OutlierDetector, records: Sequence[OutlierRecord], start: float, end: float
) -> dict[float, Verdict]:
    """Fire the interval timer at start + k * INTERVAL up to end; verdicts by time."""
    verdicts = {}
    now = start
    while now <= end:
        verdicts[now] = det.on_interval(records, now)
        now += INTERVAL
    return verdicts


# --- consecutive failures -------------------------------------------------------------


@pytest.mark.parametrize("threshold", [1, 2, 5, 10])
def test_consecutive_failures_eject_at_the_threshold(threshold: int) -> None:
    det = detector(consecutive_failures=threshold)
    records = pods(3)
    target = records[0]
    verdicts = fail(det, target, records, 100.0, threshold)
    assert not any(verdicts[:-1])
    assert verdicts[-1].ejected == (target,)
    assert verdicts[-1].reasons == ("consecutive_failures",)
    assert target.ejected
    assert target.ejected_at == 100.0
    assert target.ejection_multiplier == 1
    assert target.ejections == 1
    assert target.failures == threshold
    assert not records[1].ejected and not records[2].ejected


def test_success_resets_the_streak() -> None:
    det = detector(consecutive_failures=5)
    records = pods(3)
    target = records[0]
    fail(det, target, records, 0.0, 4)
    assert det.record(target, False, 0.0, records) == Verdict()
    assert target.consecutive_failures == 0
    fail(det, target, records, 0.0, 4)
    assert not target.ejected
    assert fail(det, target, records, 0.0, 1)[0].ejected == (target,)
    assert (target.successes, target.failures) == (1, 9)


def test_zero_disables_consecutive_failures() -> None:
    det = detector(consecutive_failures=0)
    records = pods(3)
    assert not any(fail(det, records[0], records, 0.0, 1000))
    assert not records[0].ejected
    assert records[0].consecutive_failures == 1000


def test_failures_on_an_ejected_pod_do_not_eject_it_again() -> None:
    det = detector(consecutive_failures=2)
    records = pods(3)
    eject_consecutive(det, records[0], records, 0.0)
    assert not any(fail(det, records[0], records, 1.0, 10))
    assert (records[0].ejections, records[0].ejection_multiplier) == (1, 1)
    assert records[0].ejected_at == 0.0


# --- ejection time --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("base", "cap", "multiplier", "want"),
    [
        (30, 300, 1, 30),
        (30, 300, 2, 60),
        (30, 300, 3, 90),
        (30, 300, 10, 300),
        (30, 300, 11, 300),
        (10, 15, 2, 15),
        (5, 5, 4, 5),
    ],
    ids=lambda v: str(v),
)
def test_ejection_time_is_base_times_multiplier_capped(
    base: float, cap: float, multiplier: int, want: float
) -> None:
    det = detector(base_ejection_time=base, max_ejection_time=cap)
    assert det.ejection_time(OutlierRecord(ejection_multiplier=multiplier)) == want


def test_return_only_at_an_interval_after_the_time_is_up() -> None:
    det = detector(consecutive_failures=1)
    records = pods(3)
    det.record(records[0], True, 5.0, records)  # ejected at 5: due back at 35
    assert det.next_return(records) == 35.0
    verdicts = tick_until(det, records, 10.0, 40.0)
    assert [t for t, v in verdicts.items() if v.returned] == [40.0]
    assert verdicts[40.0].returned == (records[0],)
    assert not records[0].ejected
    assert records[0].consecutive_failures == 0
    assert det.next_return(records) is None


def test_return_exactly_when_the_time_is_up() -> None:
    det = detector(consecutive_failures=1)
    records = pods(3)
    det.record(records[0], True, 0.0, records)
    assert not det.on_interval(records, 29.999).returned
    assert det.on_interval(records, 30.0).returned == (records[0],)


def test_second_ejection_lasts_twice_as_long() -> None:
    det = detector(consecutive_failures=1)
    records = pods(3)
    det.record(records[0], True, 0.0, records)
    assert tick_until(det, records, 10.0, 30.0)[30.0].returned == (records[0],)
    det.record(records[0], True, 35.0, records)  # before any interval could decay it
    assert records[0].ejection_multiplier == 2
    assert det.ejection_time(records[0]) == 2 * BASE
    assert det.next_return(records) == 95.0
    verdicts = tick_until(det, records, 40.0, 100.0)
    assert [t for t, v in verdicts.items() if v.returned] == [100.0]
    assert records[0].ejections == 2


def test_multiplier_decays_by_one_per_interval_without_ejection() -> None:
    det = detector(consecutive_failures=1, max_ejection_time=1000)
    records = pods(3)
    for t in (0.0, 35.0, 100.0):  # three ejections, each before any decay
        det.record(records[0], True, t, records)
        while records[0].ejected:
            t += INTERVAL
            det.on_interval(records, t)
    assert records[0].ejection_multiplier == 3
    seen = []
    for k in range(1, 6):
        det.on_interval(records, 1000.0 + k * INTERVAL)
        seen.append(records[0].ejection_multiplier)
    assert seen == [2, 1, 0, 0, 0]
    det.record(records[0], True, 2000.0, records)
    assert det.ejection_time(records[0]) == BASE  # back to a first ejection's time


def test_no_decay_while_ejected() -> None:
    det = detector(consecutive_failures=1)
    records = pods(3)
    det.record(records[0], True, 0.0, records)
    tick_until(det, records, 10.0, 20.0)
    assert records[0].ejected
    assert records[0].ejection_multiplier == 1


# --- how many may be ejected ----------------------------------------------------------


@pytest.mark.parametrize(
    ("total", "already", "percent", "allowed"),
    [
        (10, 0, 10, True),  # 1/10 = 10%
        (10, 1, 10, False),  # 2/10 = 20% > 10%, counted after the ejection
        (10, 1, 20, True),  # 2/10 = 20%
        (20, 1, 10, True),  # 2/20 = 10%
        (20, 2, 10, False),  # 3/20 = 15%
        (5, 0, 0, True),  # one pod may always be ejected
        (3, 0, 10, True),  # 1/3 = 33% > 10%, but it is the first
        (2, 0, 10, True),  # leaves one
        (1, 0, 100, False),  # never the last pod
        (2, 1, 100, False),  # never the last pod
        (3, 1, 100, True),  # leaves one
        (4, 3, 100, False),
    ],
    ids=lambda v: str(v),
)
def test_max_ejection_percent(total: int, already: int, percent: float, allowed: bool) -> None:
    det = detector(consecutive_failures=1, max_ejection_percent=percent)
    records = pods(total)
    for record in records[:already]:
        record.ejected_at = 0.0
        record.ejection_multiplier = 1
    candidate = records[already]
    verdict = det.record(candidate, True, 1.0, records)
    assert candidate.ejected is allowed
    assert bool(verdict) is allowed
    assert sum(r.ejected for r in records) == already + allowed


def test_cap_applies_to_statistical_ejections() -> None:
    bad = [(50, 50), (50, 50)]
    good = [(100, 0)] * 8
    for percent, want in ((10, 1), (20, 2)):
        det = detector(max_ejection_percent=percent)
        records = with_outcomes(bad + good)
        verdict = det.on_interval(records, 10.0)
        assert len(verdict.ejected) == want
        assert verdict.reasons == ("success_rate",) * want
        # The ones the cap forbade, by the method that found them (for the metric's label).
        assert verdict.overflowed == ("success_rate",) * (2 - want)


def test_an_ejection_the_cap_forbids_is_reported_with_its_method() -> None:
    det = detector(consecutive_failures=1)
    records = pods(2)
    records[1].ejected_at = 0.0  # the other pod is out: this one is the last
    verdict = det.record(records[0], True, 1.0, records)
    assert not verdict and verdict.overflowed == ("consecutive_failures",)


# --- success rate ---------------------------------------------------------------------

# (id, per-pod (successes, failures), indices expected to be ejected) with the
# defaults: stdev factor 1.9, 5 hosts, 100 calls each.
SUCCESS_RATE_CASES = [
    # rates 1, 1, 1, 1, 0.5: mean 0.9, stdev 0.2, threshold 0.9 - 1.9 * 0.2 = 0.52
    ("one_bad_of_five", [(100, 0)] * 4 + [(50, 50)], [4]),
    # rates .95 .96 .97 .98 .94: mean .96, stdev .0141, threshold .933: none below
    ("spread_without_outlier", [(95, 5), (96, 4), (97, 3), (98, 2), (94, 6)], []),
    ("all_equal", [(90, 10)] * 5, []),
    ("all_perfect", [(100, 0)] * 5, []),
    ("four_hosts_below_minimum", [(100, 0)] * 3 + [(50, 50)], []),
    # the bad pod has 99 calls: it is not rated, and four rated pods are too few
    ("bad_pod_below_volume", [(100, 0)] * 4 + [(49, 50)], []),
    # the low-volume bad pod is not rated even though five others are
    ("bad_pod_below_volume_of_six", [(100, 0)] * 5 + [(0, 99)], []),
    # rates 8 x 1 and 2 x 0.5: mean 0.9, stdev 0.2, threshold 0.52
    ("two_bad_of_ten", [(100, 0)] * 8 + [(50, 50), (50, 50)], [8, 9]),
]


@pytest.mark.parametrize(
    ("outcomes", "want"),
    [(o, w) for _, o, w in SUCCESS_RATE_CASES],
    ids=[i for i, _, _ in SUCCESS_RATE_CASES],
)
def test_success_rate_outliers(outcomes: list[tuple[int, int]], want: list[int]) -> None:
    records = with_outcomes(outcomes)
    found = success_rate_outliers(records, volume=100, minimum_hosts=5, stdev_factor=1.9)
    assert indices(records, found) == want


def test_success_rate_threshold_is_mean_minus_factor_stdev() -> None:
    # With four perfect pods and one at rate r, the bad pod's z-score is exactly 2
    # whatever r is: factor 1.9 ejects it, factor 2.1 does not.
    outcomes = [(100, 0)] * 4 + [(70, 30)]
    rates = [s / (s + f) for s, f in outcomes]
    mean = sum(rates) / 5
    stdev = math.sqrt(sum((x - mean) ** 2 for x in rates) / 5)
    assert (mean - rates[4]) / stdev == pytest.approx(2.0)
    records = with_outcomes(outcomes)
    assert success_rate_outliers(records, 100, 5, 1.9) == [records[4]]
    assert success_rate_outliers(records, 100, 5, 2.1) == []


def test_success_rate_ejection_on_the_interval() -> None:
    det = detector()  # consecutive failures do not matter here: counts are preset
    records = with_outcomes([(100, 0)] * 4 + [(50, 50)])
    verdict = det.on_interval(records, 10.0)
    assert verdict.ejected == (records[4],)
    assert verdict.reasons == ("success_rate",)
    assert records[4].ejected_at == 10.0
    assert all((r.successes, r.failures) == (0, 0) for r in records)  # a fresh interval


@pytest.mark.parametrize(
    ("overrides", "outcomes"),
    [
        ({"success_rate_minimum_hosts": 6}, [(100, 0)] * 4 + [(50, 50)]),
        ({"success_rate_request_volume": 101}, [(100, 0)] * 4 + [(50, 50)]),
        ({"success_rate_stdev_factor": 2.5}, [(100, 0)] * 4 + [(50, 50)]),
        ({"success_rate_ejection": False}, [(100, 0)] * 4 + [(0, 100)]),
    ],
    ids=["minimum_hosts", "request_volume", "stdev_factor", "switched_off"],
)
def test_success_rate_settings_respected(
    overrides: dict[str, object], outcomes: list[tuple[int, int]]
) -> None:
    det = detector(**overrides)
    assert not det.on_interval(with_outcomes(outcomes), 10.0)


def test_success_rate_ignores_pods_already_ejected() -> None:
    records = with_outcomes([(100, 0)] * 5 + [(50, 50)])
    records[5].ejected_at = 0.0
    assert success_rate_outliers(records, 100, 5, 1.9) == []


# --- failure percentage ---------------------------------------------------------------

FAILURE_PERCENTAGE_CASES = [
    ("86_percent", [(100, 0)] * 4 + [(7, 43)], [4]),
    ("exactly_85_is_ejected", [(100, 0)] * 4 + [(15, 85)], [4]),
    ("84_percent", [(100, 0)] * 4 + [(8, 42)], []),
    ("four_hosts_below_minimum", [(100, 0)] * 3 + [(0, 50)], []),
    ("below_volume", [(100, 0)] * 5 + [(0, 49)], []),
    ("all_failing", [(0, 50)] * 5, [0, 1, 2, 3, 4]),
]


@pytest.mark.parametrize(
    ("outcomes", "want"),
    [(o, w) for _, o, w in FAILURE_PERCENTAGE_CASES],
    ids=[i for i, _, _ in FAILURE_PERCENTAGE_CASES],
)
def test_failure_percentage_outliers(outcomes: list[tuple[int, int]], want: list[int]) -> None:
    records = with_outcomes(outcomes)
    found = failure_percentage_outliers(records, volume=50, minimum_hosts=5, threshold=85.0)
    assert indices(records, found) == want


def test_failure_percentage_ejection_when_enabled() -> None:
    # Rates all alike: success-rate analysis sees no outlier, the failure percentage does.
    outcomes = [(5, 45)] * 5
    assert not detector(success_rate_ejection=False).on_interval(with_outcomes(outcomes), 10.0)
    det = detector(
        success_rate_ejection=False, failure_percentage_ejection=True, max_ejection_percent=100
    )
    records = with_outcomes(outcomes)
    verdict = det.on_interval(records, 10.0)
    # never the last pod: four of five go
    assert len(verdict.ejected) == 4
    assert verdict.reasons == ("failure_percentage",) * 4
    assert not records[4].ejected


def test_failure_percentage_is_off_by_default() -> None:
    records = with_outcomes([(0, 50)] * 5)
    assert not detector(success_rate_ejection=False).on_interval(records, 10.0)


def test_both_analyses_eject_a_pod_once() -> None:
    det = detector(failure_percentage_ejection=True)
    records = with_outcomes([(100, 0)] * 4 + [(0, 100)])
    verdict = det.on_interval(records, 10.0)
    assert verdict.ejected == (records[4],)
    assert records[4].ejections == 1


# --- the verdict ----------------------------------------------------------------------


def test_empty_verdict_is_false() -> None:
    assert not Verdict()
    assert Verdict(ejected=(OutlierRecord(),))
    assert Verdict(returned=(OutlierRecord(),))


def test_interval_with_nothing_to_do() -> None:
    det = detector()
    records = pods(5)
    assert det.on_interval(records, 10.0) == Verdict()
    assert det.on_interval([], 20.0) == Verdict()


# --- enforcement (gRFC A50 enforcement_percentage, Envoy's enforcing_*) -------------------


class Draws(random.Random):
    """``randrange`` answers from a fixed list: the enforcement draws, in order."""

    def __init__(self, *draws: int) -> None:
        super().__init__(0)
        self.draws = list(draws)

    def randrange(self, *args: object, **kwargs: object) -> int:  # type: ignore[override]
        return self.draws.pop(0)


@pytest.mark.parametrize(
    ("percent", "draw", "ejected"),
    [(50, 49, True), (50, 50, False), (1, 0, True), (0, 0, False), (100, 99, True)],
)
def test_an_outlier_is_ejected_when_the_draw_is_below_the_enforcement(
    percent: int, draw: int, ejected: bool
) -> None:
    settings = Settings.load({"success_rate_enforcement_percent": percent}, environ={})
    rng = Draws(draw)
    det = OutlierDetector(settings, rng)
    records = with_outcomes([(100, 0)] * 4 + [(50, 50)])
    verdict = det.on_interval(records, 10.0)
    assert records[4].ejected is ejected
    assert verdict.ejected == ((records[4],) if ejected else ())
    assert rng.draws == ([draw] if percent in (0, 100) else [])  # 0 and 100 need no draw


def test_failure_percentage_has_its_own_enforcement() -> None:
    settings = Settings.load(
        {
            "success_rate_ejection": False,
            "failure_percentage_ejection": True,
            "failure_percentage_enforcement_percent": 30,
            "max_ejection_percent": 100,
        },
        environ={},
    )
    det = OutlierDetector(settings, Draws(10, 90, 29, 30))
    records = with_outcomes([(0, 50)] * 4 + [(100, 0)])
    verdict = det.on_interval(records, 10.0)
    assert indices(records, verdict.ejected) == [0, 2]  # draws 10 and 29 are below 30


def test_enforcement_spares_outliers_at_the_rate_asked() -> None:
    """Over many intervals a 25 % enforcement ejects about a quarter of the outliers found."""
    settings = Settings.load({"success_rate_enforcement_percent": 25}, environ={})
    det = OutlierDetector(settings, random.Random(5))
    ejected = 0
    for _ in range(400):
        records = with_outcomes([(100, 0)] * 4 + [(50, 50)])
        ejected += len(det.on_interval(records, 10.0).ejected)
    assert 70 <= ejected <= 130  # 100 expected; the seed makes it exact, the bound explains it
