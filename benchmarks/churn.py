"""Scenario: a rolling update at 1,000 pods, per policy (the scale issue's done-when).

One grpcio server in a child process, bound to 0.0.0.0, stands for 1,000 pods:
a real dnsmasq answers the service's name with 1,000 loopback addresses
(127.1.x.y), each dialled and watched by the client as its own pod. For each
policy a fresh sync channel is created (start-up: time until all 1,000 are
READY), then driven by 4 threads of unary calls while a fifth thread sleeps
1 ms at a time and records how late it wakes (the longest time the interpreter
was held away from it). First steady, then while one pod is replaced every
0.4 s (the DNS answer changes; the channel re-resolves every 0.4 s in both
phases, so DNS costs the same in both).
"""

from __future__ import annotations

import gc
import random
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import grpc

import grpclb
from benchmarks.common import (
    REQUEST,
    Config,
    Section,
    Table,
    Target,
    load_average,
    med_spread,
    median,
    percentile,
    ready_pods,
    wait_until,
)
from benchmarks.podhost import PodHost
from benchmarks.report import figure, save_plot
from grpclb.testing import SERVICE_NAME, DnsServer, echo_pb2_grpc
from grpclb.testing.crowd import loopback_hosts
from grpclb.testing.pods import pick_port

NAME = "churn"
TITLE = "Rolling update at 1,000 pods: calls/s, p99 and interpreter stalls, steady vs churn"
PODS = 1000
POLICIES = ("ring_hash", "maglev", "least_request", "round_robin")
THREADS = 4
REPLACE_EVERY_S = 0.4
SERVER_WORKERS = 8
READY_LIMIT_S = 2.0
KEYS = [f"user-{i}" for i in range(1000)]


@dataclass
class Phase:
    """What one phase measured."""

    seconds: float = 0.0
    latencies: list[float] = field(default_factory=list)  # seconds
    failures: int = 0
    longest_stall: float = 0.0  # seconds late past a 1 ms sleep
    longest_gc: float = 0.0  # seconds of the longest garbage collection

    @property
    def rate(self) -> float:
        return len(self.latencies) / self.seconds if self.seconds else float("nan")

    @property
    def p99_ms(self) -> float:
        return percentile(self.latencies, 99) * 1000


@dataclass
class Run:
    """One policy: start-up, then steady and churn phases, back to back, in pairs."""

    policy: str
    ready_s: float
    rebuilds_at_start: int
    pairs: list[tuple[Phase, Phase]]  # (steady, churn)
    load: str = ""

    def ratios(self) -> list[float]:
        return [c.rate / s.rate for s, c in self.pairs]

    def p99_ratios(self) -> list[float]:
        """Churn p99 over the issue's limit, max(1.5 x steady, steady + 5 ms), per pair."""
        return [c.p99_ms / max(1.5 * s.p99_ms, s.p99_ms + 5.0) for s, c in self.pairs]

    def stalls_ms(self, churn: bool) -> list[float]:
        return [pair[churn].longest_stall * 1000 for pair in self.pairs]

    def gc_ms(self, churn: bool) -> list[float]:
        return [pair[churn].longest_gc * 1000 for pair in self.pairs]

    def rates(self, churn: bool) -> list[float]:
        return [pair[churn].rate for pair in self.pairs]

    def p99s(self, churn: bool) -> list[float]:
        return [pair[churn].p99_ms for pair in self.pairs]

    @property
    def failures(self) -> int:
        return sum(s.failures + c.failures for s, c in self.pairs)


class Fleet:
    """The server child process, dnsmasq and the current host list."""

    def __init__(self, pods: int, first: str = "127.1.0.1") -> None:
        self.port = pick_port(["0.0.0.0"])
        self.host = PodHost(["0.0.0.0"], self.port, SERVER_WORKERS)
        self.dns = DnsServer()
        try:
            self.dns.start()
            self.hosts = loopback_hosts(pods, first)
            self._spare = iter(loopback_hosts(pods + 5000, first)[pods:])
            self.dns.set_records(SERVICE_NAME, self.hosts)
        except BaseException:
            self.close()
            raise

    @property
    def target(self) -> str:
        return self.dns.target(SERVICE_NAME, self.port)

    def replace_one(self, rng: random.Random) -> None:
        """A rolling update's step: one pod leaves DNS, a new address joins."""
        self.hosts[rng.randrange(len(self.hosts))] = next(self._spare)
        self.dns.set_records(SERVICE_NAME, self.hosts, wait=False)

    def close(self) -> None:
        self.dns.stop()
        self.host.close()


def _calls(channel: Any, policy: str, phase: Phase, stop: threading.Event, seed: int) -> None:
    unary = echo_pb2_grpc.EchoStub(channel).Unary
    hashed = policy in ("ring_hash", "maglev")
    rng = random.Random(seed)
    latencies = []
    failures = 0
    while not stop.is_set():
        metadata = (("x-user", KEYS[rng.randrange(len(KEYS))]),) if hashed else None
        t0 = time.perf_counter()
        try:
            unary(REQUEST, timeout=5, metadata=metadata)
        except grpc.RpcError:
            failures += 1
            continue
        latencies.append(time.perf_counter() - t0)
    phase.latencies.extend(latencies)  # list.extend is atomic under the GIL
    phase.failures += failures


def _sleeper(phase: Phase, stop: threading.Event) -> None:
    longest = 0.0
    while not stop.is_set():
        t0 = time.perf_counter()
        time.sleep(0.001)
        longest = max(longest, time.perf_counter() - t0 - 0.001)
    phase.longest_stall = longest


def _churner(fleet: Fleet, stop: threading.Event, rng: random.Random) -> None:
    while not stop.wait(REPLACE_EVERY_S):
        fleet.replace_one(rng)


class GcPauses:
    """The longest pause of the cyclic garbage collector while installed (gc.callbacks)."""

    def __init__(self) -> None:
        self.longest = 0.0
        self._started = 0.0

    def __call__(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
        else:
            self.longest = max(self.longest, time.perf_counter() - self._started)

    def __enter__(self) -> GcPauses:
        gc.callbacks.append(self)
        return self

    def __exit__(self, *exc: object) -> None:
        gc.callbacks.remove(self)


def measure_phase(
    channel: Any, policy: str, seconds: float, churn: Fleet | None, seed: int
) -> Phase:
    with GcPauses() as pauses:
        phase = _measure_phase(channel, policy, seconds, churn, seed)
    phase.longest_gc = pauses.longest
    return phase


def _measure_phase(
    channel: Any, policy: str, seconds: float, churn: Fleet | None, seed: int
) -> Phase:
    phase = Phase()
    stop = threading.Event()
    threads = [
        threading.Thread(target=_calls, args=(channel, policy, phase, stop, seed + i))
        for i in range(THREADS)
    ]
    threads.append(threading.Thread(target=_sleeper, args=(phase, stop)))
    if churn is not None:
        threads.append(threading.Thread(target=_churner, args=(churn, stop, random.Random(seed))))
    t0 = time.perf_counter()
    for thread in threads:
        thread.start()
    time.sleep(seconds)
    stop.set()
    phase.seconds = time.perf_counter() - t0
    for thread in threads:
        thread.join(timeout=10)
    return phase


def run_policy(fleet: Fleet, policy: str, seconds: float, pairs: int, seed: int) -> Run:
    hashing = {"hash_key": "x-user"} if policy in ("ring_hash", "maglev") else {}
    t0 = time.perf_counter()
    channel = grpclb.channel(
        fleet.target,
        policy=policy,
        dns_refresh_interval=REPLACE_EVERY_S,
        dns_min_refresh_interval=0.1,
        **hashing,
    )
    try:
        # Polled every 50 ms: stats() over 1,000 pods is not free, and start-up is its own cost.
        deadline = time.perf_counter() + 30
        while ready_pods(channel) < len(fleet.hosts):
            if time.perf_counter() > deadline:
                raise TimeoutError(f"{policy}: {len(fleet.hosts)} pods not ready in 30 s")
            time.sleep(0.05)
        ready_s = time.perf_counter() - t0
        rebuilds = channel._balancer.rebuilds
        # Wait out the first hash table (built in the background) before measuring.
        wait_until(lambda: not channel._balancer._pickers.table_wanted, 30, "hash table built")
        measure_phase(channel, policy, 0.5, None, seed)  # warm-up, not reported
        measured = [
            (
                measure_phase(channel, policy, seconds, None, seed + i),
                measure_phase(channel, policy, seconds, fleet, seed + i),
            )
            for i in range(pairs)
        ]
        return Run(policy, ready_s, rebuilds, measured, load_average())
    finally:
        channel.close()


def run(cfg: Config) -> Section:
    seconds, pairs = cfg.pick(3.0, 2.0), cfg.pick(3, 1)
    policies = cfg.pick(POLICIES, ("ring_hash", "least_request"))
    fleet = Fleet(PODS)
    runs: list[Run] = []
    try:
        for i, policy in enumerate(policies):
            runs.append(run_policy(fleet, policy, seconds, pairs, seed=10 * i))
    finally:
        fleet.close()
    section = Section(NAME, TITLE)
    section.intro = (
        f"{PODS:,} pods (one grpcio server with {SERVER_WORKERS} workers in a child process, "
        f"bound to 0.0.0.0; dnsmasq answers {PODS:,} loopback addresses, so the answer comes "
        f"over TCP). Per policy, a new sync channel; {THREADS} threads of unary calls (hash "
        "policies with one of 1,000 keys each call); a fifth thread sleeps 1 ms at a time and "
        f"records how late it wakes. {seconds:g} s steady, then {seconds:g} s while one pod "
        f"is replaced every {REPLACE_EVERY_S} s, {pairs} such pairs back to back (cells: "
        "median [min to max]; targets: the median of the pairs); the channel re-resolves every "
        f"{REPLACE_EVERY_S} s in both phases. *Ready* is from channel creation to all "
        f"{PODS:,} pods READY (polled every 50 ms); *rebuilds* are picker snapshots built by then."
    )
    rows = []
    for r in runs:
        rows.append(
            (
                r.policy,
                med_spread(r.rates(False), "{:,.0f}"),
                med_spread(r.rates(True), "{:,.0f}"),
                med_spread(r.ratios(), "{:.2f}"),
                f"{median(r.p99s(False)):.1f} → {median(r.p99s(True)):.1f}",
                f"{median(r.stalls_ms(False)):.0f} / {med_spread(r.stalls_ms(True), '{:.0f}')}",
                f"{max(r.gc_ms(False)):.0f} / {max(r.gc_ms(True)):.0f}",
                r.failures,
                f"{r.ready_s:.2f} s",
                r.rebuilds_at_start,
                r.load,
            )
        )
        stalls = r.stalls_ms(True)
        section.targets += [
            Target(f"Churn: {r.policy} calls/s, churn vs steady", median(r.ratios()), 0.85,
                   True, r.ratios()),
            Target(f"Churn: {r.policy} p99 during churn / max(1.5x, +5 ms) of steady",
                   median(r.p99_ratios()), 1.0, False, r.p99_ratios()),
            Target(f"Churn: {r.policy} longest stall during churn (ms)", median(stalls), 50.0,
                   False, stalls),
            Target(f"Churn: {r.policy} failed calls", r.failures, 0.0, False),
            Target(f"Churn: {r.policy} all {PODS:,} pods ready (s)", r.ready_s, READY_LIMIT_S,
                   False),
        ]  # fmt: skip
    section.tables.append(
        Table(
            (
                "Policy",
                "Calls/s steady",
                "Calls/s churn",
                "Churn / steady",
                "p99 ms steady → churn",
                "Longest stall ms steady / churn",
                "Longest GC pause ms steady / churn",
                "Failed",
                "Ready",
                "Rebuilds",
                "Load average after",
            ),
            rows,
        )
    )
    section.notes.append(
        "*Longest GC pause* is the longest run of Python's cyclic garbage collector in the "
        "phase (gc.callbacks): a full collection walks every tracked object of the process "
        "(this one holds matplotlib, grpcio's per-pod channel objects and, for the sync "
        "flavour today, one polling thread per pod), holds the interpreter meanwhile, and is "
        "the usual cause of the longest stalls here."
    )
    section.notes.append(
        "The machine is shared (2 cores, other jobs running): absolute rates move from run to "
        "run; the ratios compare phases measured back to back in the same run."
    )
    section.plots.append(_plot(cfg, runs))
    section.extra["runs"] = runs
    return section


def _plot(cfg: Config, runs: list[Run]) -> Any:
    fig, axes = figure(3, 1, width=3.4, height=3.2)
    names = [r.policy for r in runs]
    x = range(len(runs))
    panels = (
        ("calls/s", Run.rates),
        ("p99 (ms)", Run.p99s),
        ("longest stall (ms)", Run.stalls_ms),
    )
    for ax, (label, values) in zip(axes[0], panels, strict=True):
        ax.bar([i - 0.2 for i in x], [median(values(r, False)) for r in runs], 0.4, label="steady")
        ax.bar([i + 0.2 for i in x], [median(values(r, True)) for r in runs], 0.4, label="churn")
        ax.set_xticks(list(x), names, rotation=30, fontsize=7)
        ax.set_ylabel(label)
        ax.grid(alpha=0.3, axis="y")
    axes[0][2].axhline(50, color="red", linewidth=0.8, linestyle="--")
    axes[0][0].legend(fontsize=7)
    caption = f"Steady vs one pod replaced every {REPLACE_EVERY_S} s, {PODS:,} pods (medians)"
    return save_plot(cfg, fig, "churn.png", caption)
