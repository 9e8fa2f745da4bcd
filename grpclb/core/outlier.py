"""Passive outlier detection: take failing pods out of rotation from call outcomes.

Envoy's design (and gRFC A50's): a per-pod monitor written on the call path
(one increment per outcome), and a detector run on an interval timer that
does the statistics and returns pods. The detector is pure: it is handed the
time and the pods; it never reads a clock or sleeps, so tests drive it with a
fake clock.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from grpclb.config.settings import Settings


@dataclass
class OutlierRecord:
    """One pod's outlier state."""

    address: str = ""  # for logs and metrics
    consecutive_failures: int = 0
    successes: int = 0  # in the current interval
    failures: int = 0  # in the current interval
    ejected_at: float | None = None
    ejection_multiplier: int = 0
    ejections: int = 0  # total, for stats

    @property
    def ejected(self) -> bool:
        return self.ejected_at is not None


@dataclass(frozen=True)
class Verdict:
    """What one outcome or one interval changed."""

    ejected: tuple[OutlierRecord, ...] = ()
    returned: tuple[OutlierRecord, ...] = ()
    reasons: tuple[str, ...] = ()
    overflowed: tuple[str, ...] = ()
    """The detection methods of ejections the max_ejection_percent cap prevented."""

    def __bool__(self) -> bool:
        return bool(self.ejected or self.returned)


NO_VERDICT = Verdict()
"""What most outcomes change: nothing (compare by identity on the hot path)."""


class OutlierDetector:
    """Decides ejections; owns no pods, only reads and writes their records."""

    def __init__(self, settings: Settings, rng: random.Random | None = None) -> None:
        self.settings = settings
        self._rng = rng or random.Random()  # the enforcement draws; injected by tests

    def ejection_time(self, record: OutlierRecord) -> float:
        # "base_ejection_time * number of times ejected, capped by max_ejection_time" - Envoy
        s = self.settings
        return min(
            s.base_ejection_time * record.ejection_multiplier,
            max(s.base_ejection_time, s.max_ejection_time),
        )

    @staticmethod
    def succeeded(record: OutlierRecord) -> None:
        """Count one successful call: it also ends a run of consecutive failures."""
        record.successes += 1
        record.consecutive_failures = 0

    def record(
        self, record: OutlierRecord, failed: bool, now: float, records: Sequence[OutlierRecord]
    ) -> Verdict:
        """Count one call outcome; eject at once on too many consecutive failures."""
        if not failed:
            self.succeeded(record)
            return NO_VERDICT
        record.failures += 1
        record.consecutive_failures += 1
        threshold = self.settings.consecutive_failures
        if threshold and record.consecutive_failures >= threshold and not record.ejected:
            if not self._may_eject(records):
                return Verdict(overflowed=("consecutive_failures",))
            self._eject(record, now)
            return Verdict(ejected=(record,), reasons=("consecutive_failures",))
        return NO_VERDICT

    def on_interval(self, records: Sequence[OutlierRecord], now: float) -> Verdict:
        """The periodic pass: statistical ejections, returns, multiplier decay."""
        ejected: list[OutlierRecord] = []
        reasons: list[str] = []
        overflowed: list[str] = []
        for record, reason in self._statistical_outliers(records):
            if record.ejected:
                continue
            if not self._may_eject(records):
                overflowed.append(reason)
                continue
            if not self._enforced(reason):
                continue
            self._eject(record, now)
            ejected.append(record)
            reasons.append(reason)
        returned = []
        for record in records:
            record.successes = record.failures = 0
            if record.ejected_at is not None:
                if now >= record.ejected_at + self.ejection_time(record):
                    record.ejected_at = None
                    record.consecutive_failures = 0
                    returned.append(record)
            elif record.ejection_multiplier > 0 and record not in ejected:
                # "If the address is not ejected and the multiplier is greater than 0,
                # decrease the multiplier by 1." - gRFC A50
                record.ejection_multiplier -= 1
        return Verdict(tuple(ejected), tuple(returned), tuple(reasons), tuple(overflowed))

    def next_return(self, records: Iterable[OutlierRecord]) -> float | None:
        """When the earliest ejected pod is due back, so a timer can be set."""
        due = [r.ejected_at + self.ejection_time(r) for r in records if r.ejected_at is not None]
        return min(due, default=None)

    def _may_eject(self, records: Sequence[OutlierRecord]) -> bool:
        total = len(records)
        ejected = sum(1 for r in records if r.ejected)
        if ejected + 1 >= total:
            return False  # never the last pod
        if ejected == 0:
            return True  # one pod may always be ejected
        return (ejected + 1) * 100 <= self.settings.max_ejection_percent * total

    def _enforced(self, reason: str) -> bool:
        """gRFC A50 (Envoy's enforcing_*): an outlier found is ejected with this chance.

        "randomly generate an integer between [0, 100). If that number is less than
        enforcement_percentage, eject that address."
        """
        s = self.settings
        if reason == "success_rate":
            percent = s.success_rate_enforcement_percent
        else:
            percent = s.failure_percentage_enforcement_percent
        if percent <= 0 or percent >= 100:
            return percent >= 100  # certain either way: no draw
        return self._rng.randrange(100) < percent

    @staticmethod
    def _eject(record: OutlierRecord, now: float) -> None:
        record.ejected_at = now
        record.ejection_multiplier += 1
        record.ejections += 1

    def _statistical_outliers(
        self, records: Sequence[OutlierRecord]
    ) -> list[tuple[OutlierRecord, str]]:
        s = self.settings
        found: list[tuple[OutlierRecord, str]] = []
        if s.success_rate_ejection:
            found += [
                (r, "success_rate")
                for r in success_rate_outliers(
                    records,
                    s.success_rate_request_volume,
                    s.success_rate_minimum_hosts,
                    s.success_rate_stdev_factor,
                )
            ]
        if s.failure_percentage_ejection:
            found += [
                (r, "failure_percentage")
                for r in failure_percentage_outliers(
                    records,
                    s.failure_percentage_request_volume,
                    s.failure_percentage_minimum_hosts,
                    s.failure_percentage_threshold,
                )
            ]
        return found


def success_rate_outliers(
    records: Sequence[OutlierRecord], volume: int, minimum_hosts: int, stdev_factor: float
) -> list[OutlierRecord]:
    """Pods whose success rate is below mean - factor * stdev (Envoy's success rate)."""
    rated = [
        (r, r.successes / (r.successes + r.failures))
        for r in records
        if not r.ejected and r.successes + r.failures >= volume
    ]
    if len(rated) < minimum_hosts:
        return []
    rates = [rate for _, rate in rated]
    mean = sum(rates) / len(rates)
    stdev = math.sqrt(sum((x - mean) ** 2 for x in rates) / len(rates))
    threshold = mean - stdev_factor * stdev
    return [r for r, rate in rated if rate < threshold]


def failure_percentage_outliers(
    records: Sequence[OutlierRecord], volume: int, minimum_hosts: int, threshold: float
) -> list[OutlierRecord]:
    """Pods failing at least ``threshold`` percent of their calls."""
    counted = [r for r in records if not r.ejected and r.successes + r.failures >= volume]
    if len(counted) < minimum_hosts:
        return []
    # "If the failure percentage of a given host is greater than or equal to this value,
    # it will be ejected." - Envoy outlier detection docs
    return [r for r in counted if 100.0 * r.failures / (r.successes + r.failures) >= threshold]
