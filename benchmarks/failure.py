"""Scenario 5: a pod dies, or starts failing, under load; what callers see and how fast.

Two grpclb channels share the same five pods and the same event, each driven by
its own threads: one with default settings (2 retries on UNAVAILABLE, outlier
ejection after 5 consecutive failures), one with retries off. A monitor reads
each channel's ``stats()`` every 5 ms to time when the pod leaves rotation.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import grpc

import grpclb
from benchmarks.common import (
    REQUEST,
    Config,
    Section,
    Table,
    fmt_ms,
    static_target,
    wait_ready,
)
from benchmarks.drive import unary
from benchmarks.report import figure, save_plot
from grpclb.testing import PodFleet, ProcessPod

NAME = "failure"
TITLE = "Failure under load: a pod killed, a pod failing"
PODS = 5
THREADS = 4  # per channel
DEADLINE_S = 1.0
CONFIGS: dict[str, dict[str, Any]] = {"defaults": {}, "retries off": {"retries": 0}}
MAX_RUN_S = 120.0


@dataclass
class Trace:
    calls: list[tuple[float, bool, str]] = field(default_factory=list)  # (time, ok, pod|code)
    samples: list[tuple[float, str, int]] = field(default_factory=list)  # (time, state, failures)


class Load:
    """Closed-loop calls on every channel plus the stats monitor, until ``stop()``."""

    def __init__(self, channels: dict[str, grpclb.Channel], victim: str) -> None:
        self.traces = {name: Trace() for name in channels}
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._monitor, args=(channels, victim), daemon=True)
        ]
        for name, channel in channels.items():
            call_unary = unary(channel)
            for _ in range(THREADS):
                thread = threading.Thread(
                    target=self._caller, args=(call_unary, self.traces[name]), daemon=True
                )
                self._threads.append(thread)
        self._started = time.perf_counter()
        for thread in self._threads:
            thread.start()

    def _caller(self, unary: Callable[..., Any], trace: Trace) -> None:
        while not self._stop.is_set() and time.perf_counter() - self._started < MAX_RUN_S:
            try:
                pod = unary(REQUEST, timeout=DEADLINE_S).pod
                trace.calls.append((time.perf_counter(), True, pod))
            except grpc.RpcError as error:
                trace.calls.append((time.perf_counter(), False, error.code().name))

    def _monitor(self, channels: dict[str, grpclb.Channel], victim: str) -> None:
        while not self._stop.wait(0.005):
            for name, channel in channels.items():
                row = channel.stats().by_address().get(victim)
                if row is not None:
                    self.traces[name].samples.append((time.perf_counter(), row.state, row.failures))

    def stop(self) -> dict[str, Trace]:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=DEADLINE_S + 5)
        return self.traces


@dataclass
class Event:
    kind: str  # "killed" or "failing"
    at: float = 0.0  # the pod died or started failing
    back: float = 0.0  # the pod serves again (restarted, or answers OK again)


def _kill_and_restart(
    fleet: PodFleet, load_for: Callable[[str], Load], wait: float, revived: list[ProcessPod]
) -> Any:
    victim = fleet[PODS - 1]
    assert isinstance(victim, ProcessPod)
    event = Event("killed")
    load = load_for(victim.address)
    try:
        time.sleep(1.0)
        event.at = time.perf_counter()
        victim.kill()
        time.sleep(2.0)
        # A new pod process at the same address; the caller stops it.
        revived.append(ProcessPod(victim.host, victim.port))
        event.back = time.perf_counter()
        _wait_served(load, victim.address, event.back, wait)
    finally:
        traces = load.stop()
    return event, victim.address, traces


def _fail_and_heal(fleet: PodFleet, load_for: Callable[[str], Load], wait: float) -> Any:
    victim = fleet[PODS - 2]
    event = Event("failing")
    load = load_for(victim.address)
    try:
        time.sleep(1.0)
        event.at = time.perf_counter()
        victim.set_mode("unavailable")
        time.sleep(2.0)
        victim.set_mode("ok")
        event.back = time.perf_counter()
        _wait_served(load, victim.address, event.back, wait)
    finally:
        traces = load.stop()
    return event, victim.address, traces


def _wait_served(load: Load, pod: str, after: float, wait: float) -> None:
    """Until every channel has had a call answered by ``pod`` after ``after`` (bounded)."""
    cursors = dict.fromkeys(load.traces, 0)
    served: set[str] = set()
    deadline = time.perf_counter() + wait
    while time.perf_counter() < deadline and len(served) < len(load.traces):
        time.sleep(0.05)
        for name, trace in load.traces.items():
            calls = trace.calls[cursors[name] :]
            cursors[name] += len(calls)
            if any(ok and who == pod and t >= after for t, ok, who in calls):
                served.add(name)
    time.sleep(0.5)  # a little steady state after the recovery, for the plot


def run(cfg: Config) -> Section:
    recovery_wait = cfg.pick(45.0, 5.0)
    outcomes = []
    revived: list[ProcessPod] = []
    with PodFleet(PODS, processes=True) as fleet:
        target = static_target(fleet.addresses)
        channels = {name: grpclb.channel(target, **s) for name, s in CONFIGS.items()}
        try:
            for channel in channels.values():
                wait_ready(channel, PODS)

            def load_for(victim: str) -> Load:
                return Load(channels, victim)

            outcomes.append(_kill_and_restart(fleet, load_for, recovery_wait, revived))
            outcomes.append(_fail_and_heal(fleet, load_for, recovery_wait))
        finally:
            for channel in channels.values():
                channel.close()
            for pod in revived:
                pod.stop()
    section = Section(NAME, TITLE)
    section.intro = (
        f"{PODS} pod processes, two grpclb channels (default policy least_request) driven at "
        f"the same time by {THREADS} threads each, every call with a {DEADLINE_S:g} s "
        "deadline. *Killed*: the pod gets SIGKILL one second into the run and a new process "
        "takes its address two seconds later. *Failing*: the pod answers UNAVAILABLE for two "
        "seconds, then OK again. *Out of rotation* is when the monitor first saw the pod "
        "leave `ready` (killed) or become `ejected` (failing); *last failed attempt* when the "
        "pod's failure count last grew; *back in rotation* is from the pod serving again "
        "to the first call it answered. Time resolution about 5 ms."
    )
    rows = []
    for event, victim, traces in outcomes:
        for name, trace in traces.items():
            rows.append((event.kind, name, *_row(trace, event, victim, recovery_wait)))
    section.tables.append(
        Table(
            (
                "Event",
                "Channel",
                "Calls OK",
                "Calls failed (caller saw)",
                "Failed attempts on the pod",
                "Out of rotation after",
                "Last failed attempt after",
                "Back in rotation after",
            ),
            rows,
        )
    )
    section.notes.append(
        "A pod that fails stays ejected for `base_ejection_time` (30 s by default) and "
        "returns at the next outlier interval (every 10 s), so *failing* recovers in 30 to 40 "
        "s by design. A killed pod's connection is re-established by grpcio's reconnect "
        "backoff (1 s, growing 1.6x with jitter), which sets when the new process is found; "
        "each channel has its own connection and backoff, so the two differ by chance. "
        "Both channels dip while the new pod process starts: Python starting up on the same "
        "two cores."
    )
    section.plots.append(_plot(cfg, outcomes))
    return section


def _row(trace: Trace, event: Event, victim: str, wait: float) -> tuple[Any, ...]:
    after = [c for c in trace.calls if c[0] >= event.at]
    ok = sum(1 for c in after if c[1])
    gone = "ejected" if event.kind == "failing" else None
    out_at = next(
        (
            t
            for t, state, _ in trace.samples
            if t >= event.at and (state == gone if gone else state != "ready")
        ),
        None,
    )
    before = [f for t, _, f in trace.samples if t < event.at]
    base = before[-1] if before else 0
    window = [(t, f) for t, _, f in trace.samples if event.at <= t <= event.back]
    attempts = (window[-1][1] - base) if window else 0
    grew = [t for (t, f), (_, prev) in zip(window[1:], window, strict=False) if f > prev]
    if window and window[0][1] > base:
        grew.insert(0, window[0][0])
    back = next(
        (t for t, good, who in trace.calls if good and who == victim and t >= event.back), None
    )
    return (
        ok,
        len(after) - ok,
        attempts,
        fmt_ms((out_at - event.at) * 1000) if out_at else "not seen",
        fmt_ms((grew[-1] - event.at) * 1000) if grew else "none",
        fmt_ms((back - event.back) * 1000) if back else f"not within {wait:g} s",
    )


def _plot(cfg: Config, outcomes: list[Any]) -> tuple[str, str]:
    fig, axes = figure(len(outcomes), 1, width=5.6, height=3.4)
    for ax, (event, _victim, traces) in zip(axes[0], outcomes, strict=True):
        for i, (name, trace) in enumerate(traces.items()):
            bins: dict[int, list[int]] = {}
            for t, good, _ in trace.calls:
                slot = bins.setdefault(int((t - event.at) * 10), [0, 0])
                slot[0 if good else 1] += 1
            xs = list(range(min(bins), max(bins) + 1))  # a tenth of a second without calls is 0
            for x in xs:
                bins.setdefault(x, [0, 0])
            ax.plot(
                [x / 10 for x in xs],
                [bins[x][0] * 10 for x in xs],
                color=f"C{i}",
                linewidth=1,
                label=f"{name}: OK calls/s",
            )
            failed = [x for x in xs if bins[x][1]]
            ax.scatter(
                [x / 10 for x in failed],
                [bins[x][1] * 10 for x in failed],
                color=f"C{i}",
                marker="x",
                s=20,
                label=f"{name}: failed calls/s",
            )
        ax.axvline(0, color="tab:red", linestyle="--", linewidth=1)
        ax.axvline(event.back - event.at, color="tab:green", linestyle="--", linewidth=1)
        ax.set_title(f"pod {event.kind} at 0 s (red), serving again (green)", fontsize=9)
        ax.set_xlabel("seconds since the event")
        ax.set_yscale("symlog", linthresh=10)
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    return save_plot(cfg, fig, "failure.png", "Calls per second around a pod's failure")
