"""Scenario: hedging (gRFC A6) against a slow pod, and the same calls without it.

Five pod processes behind round_robin; one answers every call after 1 s. The
same calls run with no retry policy (every fifth call waits the second out)
and with a service config ``hedgingPolicy`` (maxAttempts 2, hedgingDelay
0.1 s): a call still waiting after 0.1 s is also sent to a pod not yet tried,
the first answer wins and the other attempt is cancelled. The pods count what
they served, so attempts per call are the servers' own figure.
"""

from __future__ import annotations

import json
import threading
import time
from typing import Any

import grpc

import grpclb
from benchmarks.common import (
    REQUEST,
    Config,
    Section,
    Table,
    Target,
    med_spread,
    median,
    percentile,
    static_target,
    wait_ready,
)
from benchmarks.drive import unary
from benchmarks.report import figure, save_plot
from grpclb.testing import PodFleet

NAME = "hedging"
TITLE = "Hedging: a pod answering after 1 s, with and without a hedgingPolicy"
PODS = 5
THREADS = 4
SLOW_MS = 1000
HEDGING = {
    "methodConfig": [
        {
            "name": [{"service": "grpclb.testing.Echo"}],
            "hedgingPolicy": {
                "maxAttempts": 2,
                "hedgingDelay": "0.1s",
                "nonFatalStatusCodes": ["UNAVAILABLE"],
            },
        }
    ]
}
ARMS: tuple[tuple[str, dict[str, Any]], ...] = (
    ("round_robin, no hedging", {"policy": "round_robin"}),
    (
        "round_robin + hedgingPolicy",
        {"policy": "round_robin", "service_config": json.dumps(HEDGING)},
    ),
)


def _one_run(fleet: PodFleet, settings: dict[str, Any], calls: int) -> tuple[list[float], int, int]:
    """(latencies in s, failed calls, attempts the pods served)."""
    channel = grpclb.channel(static_target(fleet.addresses), **settings)
    latencies: list[float] = []
    failed = [0]
    lock = threading.Lock()
    try:
        wait_ready(channel, PODS)
        call = unary(channel)

        def worker(index: int) -> None:
            for _ in range(index, calls, THREADS):
                started = time.perf_counter()
                try:
                    call(REQUEST, timeout=5.0)
                except grpc.RpcError:
                    with lock:
                        failed[0] += 1
                    continue
                with lock:
                    latencies.append(time.perf_counter() - started)

        fleet.reset_stats()
        pool = [threading.Thread(target=worker, args=(t,), daemon=True) for t in range(THREADS)]
        for thread in pool:
            thread.start()
        for thread in pool:
            thread.join(timeout=300)
        served = sum(fleet.counts().values())
    finally:
        channel.close()
    return latencies, failed[0], served


def run(cfg: Config) -> Section:
    calls, reps = cfg.pick(400, 100), cfg.pick(3, 1)
    p50: dict[str, list[float]] = {label: [] for label, _ in ARMS}
    p99: dict[str, list[float]] = {label: [] for label, _ in ARMS}
    per_call: dict[str, list[float]] = {label: [] for label, _ in ARMS}
    failed = dict.fromkeys(p50, 0)
    with PodFleet(PODS, processes=True) as fleet:
        fleet[0].set_mode("slow", delay_ms=SLOW_MS)
        for _ in range(reps):
            for label, settings in ARMS:  # alternated, so a busy moment hits both arms
                latencies, errors, served = _one_run(fleet, settings, calls)
                p50[label].append(percentile(latencies, 50))
                p99[label].append(percentile(latencies, 99))
                per_call[label].append(served / max(len(latencies) + errors, 1))
                failed[label] += errors
    section = Section(NAME, TITLE)
    section.intro = (
        f"{calls:,} unary calls per run from {THREADS} threads over {PODS} pod processes, one of "
        f"which answers every call after {SLOW_MS} ms; {reps} alternated run(s) per arm. "
        "The hedged arm gives the service config `hedgingPolicy` {maxAttempts: 2, "
        "hedgingDelay: 0.1s}. Attempts per call are counted by the pods (a cancelled hedge "
        "still counts: the pod received it)."
    )
    rows = [
        (
            label,
            med_spread(p50[label], "{:.4f}"),
            med_spread(p99[label], "{:.3f}"),
            med_spread(per_call[label]),
            failed[label],
        )
        for label, _ in ARMS
    ]
    section.tables.append(
        Table(("Arm", "p50 s", "p99 s", "Attempts per call", "Failed calls"), rows)
    )
    hedged = ARMS[1][0]
    section.targets.append(
        Target("Hedging over a 1 s pod: p99 (s)", median(p99[hedged]), 0.35, False, p99[hedged])
    )
    section.targets.append(
        Target(
            "Hedging over a 1 s pod: attempts per call",
            median(per_call[hedged]),
            1.35,
            False,
            per_call[hedged],
        )
    )
    section.plots.append(_plot(cfg, p99))
    return section


def _plot(cfg: Config, p99: dict[str, list[float]]) -> tuple[str, str]:
    fig, axes = figure(1, 1, width=6.0, height=3.2)
    ax = axes[0][0]
    labels = list(p99)
    ax.bar(range(len(labels)), [median(p99[label]) * 1000 for label in labels], color=["C1", "C0"])
    ax.set_xticks(range(len(labels)), labels, fontsize=8)
    ax.set_ylabel("p99 latency, ms")
    ax.set_title("5 pods, one answering after 1 s", fontsize=9)
    ax.grid(axis="y", alpha=0.3)
    return save_plot(cfg, fig, "hedging.png", "p99 latency with and without hedging")
