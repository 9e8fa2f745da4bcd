"""What every scenario shares: settings of a run, load drivers, statistics, results.

A scenario is a module with ``NAME``, ``TITLE`` and ``run(cfg) -> Section``; it
measures its baseline in the same process run as grpclb, alternating the two,
and returns tables, plots and targets that ``report`` turns into markdown.
"""

from __future__ import annotations

import asyncio
import math
import os
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

from grpclb.testing import echo_pb2

T = TypeVar("T")
ROOT = Path(__file__).resolve().parents[1]
REQUEST = echo_pb2.EchoRequest(message="benchmark")
CALL_TIMEOUT_S = 5.0
MEDIANS_NOTE = (
    "The throughput columns are the medians of each side's runs; the ratio is the median of "
    "the ratios of runs made back to back, which cancels the machine's drift that moves the "
    "per-side medians, so the two need not agree. *Client CPU* is this process's CPU time per "
    "call, every thread included (grpcio's own threads too)."
)
READY_TIMEOUT_S = 20.0


@dataclass(frozen=True)
class Config:
    """One run of the suite: how long to measure, and where plots go."""

    quick: bool
    plot_dir: Path
    plot_prefix: str = "benchmarks"  # how the markdown file refers to plot_dir

    def pick(self, full: T, quick: T) -> T:
        """The full run's value, or the smoke run's."""
        return quick if self.quick else full


# --- results --------------------------------------------------------------------------


@dataclass
class Target:
    """One target of the issue: a measured ratio against its limit."""

    name: str
    measured: float
    limit: float
    at_least: bool  # True: measured >= limit passes; False: measured <= limit passes
    values: Sequence[float] = ()  # one per repetition, when the target is their median

    @property
    def passed(self) -> bool:
        if self.measured != self.measured:  # NaN: nothing was measured
            return False
        return self.measured >= self.limit if self.at_least else self.measured <= self.limit

    @property
    def status(self) -> str:
        return "PASS" if self.passed else "MISS"

    @property
    def rule(self) -> str:
        return f"{'≥' if self.at_least else '≤'} {self.limit:g}"

    @property
    def confidence(self) -> str:
        """The median's 95 % interval, and whether it leaves the verdict in doubt."""
        interval = median_interval(self.values)
        if interval is None:
            return "n/a (too few repetitions)" if len(self.values) > 1 else "n/a"
        low, high = interval
        doubt = " (straddles the target)" if low < self.limit < high else ""
        return f"{low:.3f} to {high:.3f}{doubt}"


@dataclass
class Table:
    headers: Sequence[str]
    rows: Sequence[Sequence[Any]]
    caption: str = ""


@dataclass
class Section:
    """What one scenario reports."""

    name: str
    title: str
    intro: str = ""
    tables: list[Table] = field(default_factory=list)
    plots: list[tuple[str, str]] = field(default_factory=list)  # (markdown path, caption)
    targets: list[Target] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)  # for later scenarios, not reported


# --- statistics -----------------------------------------------------------------------


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def median_interval(values: Sequence[float], level: float = 0.95) -> tuple[float, float] | None:
    """Distribution-free confidence interval of the median (order statistics, binomial).

    None below 6 values, where even the full range covers the median with less than 95 %.
    """
    n = len(values)
    if n < 6:
        return None
    ordered = sorted(values)
    k, tail = 0, 0.0  # the largest k with P(Binomial(n, 1/2) < k) <= (1 - level) / 2
    while tail + math.comb(n, k) / 2**n <= (1 - level) / 2:
        tail += math.comb(n, k) / 2**n
        k += 1
    k = max(k, 1)
    return ordered[k - 1], ordered[n - k]


def spread(values: Sequence[float], fmt: str = "{:.3f}") -> str:
    """``min to max (n=K)`` of repeated measurements: the honest range, not a confidence."""
    if not values:
        return "n/a"
    if len(values) == 1:
        return f"n=1: {fmt.format(values[0])}"
    return f"{fmt.format(min(values))} to {fmt.format(max(values))} (n={len(values)})"


def med_spread(values: Sequence[float], fmt: str = "{:.3f}") -> str:
    """``median [min to max (n=K)]`` in one cell."""
    if not values:
        return "n/a"
    return f"{fmt.format(median(values))} [{spread(values, fmt)}]"


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100): always a latency that was observed."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(1, min(len(ordered), -(-len(ordered) * q // 100)))
    return float(ordered[int(rank) - 1])


def wait_until(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll ``predicate`` every 10 ms, at most ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"benchmark setup: {what} not reached within {timeout:.0f} s")
        time.sleep(0.01)


def ready_pods(channel: Any) -> int:
    """How many pods a grpclb channel (sync or aio) has READY."""
    return sum(1 for e in channel.stats().endpoints if e.state == "ready")


def wait_ready(channel: Any, pods: int, timeout: float = READY_TIMEOUT_S) -> None:
    """Until a sync grpclb channel has ``pods`` pods READY."""
    wait_until(partial(_has_ready, channel, pods), timeout, f"{pods} pods ready")


def _has_ready(channel: Any, pods: int) -> bool:
    return ready_pods(channel) >= pods


async def wait_ready_async(channel: Any, pods: int, timeout: float = READY_TIMEOUT_S) -> None:
    deadline = time.monotonic() + timeout
    await channel.channel_ready()
    while ready_pods(channel) < pods:
        if time.monotonic() > deadline:
            raise TimeoutError(f"benchmark setup: {pods} ready pods not reached")
        await asyncio.sleep(0.01)


def static_target(addresses: Sequence[str]) -> str:
    """A fixed pod list, as grpcio and grpclb both spell it."""
    return "ipv4:" + ",".join(addresses)


def native_round_robin_options() -> list[tuple[str, Any]]:
    """grpcio's own round_robin, chosen the way a user would: a service config."""
    return [("grpc.service_config", '{"loadBalancingConfig": [{"round_robin": {}}]}')]


def load_average() -> str:
    try:
        one, five, fifteen = os.getloadavg()
    except OSError:
        return "n/a"
    return f"{one:.2f} / {five:.2f} / {fifteen:.2f}"


# --- formatting -----------------------------------------------------------------------


def fmt_rate(value: float) -> str:
    return f"{value:,.0f}/s"


def fmt_us(value: float) -> str:
    return f"{value:.1f} µs"


def fmt_ms(value: float) -> str:
    if value != value:
        return "n/a"
    return f"{value:.1f} ms" if value < 1000 else f"{value / 1000:.2f} s"
