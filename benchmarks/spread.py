"""Scenario 3: how evenly each policy spreads calls over 10 equal pods.

Each pod counts the calls it served (the pods' own counters, reset before each
run), so the numbers are what the servers saw, retries included.
"""

from __future__ import annotations

import random
import threading
from collections.abc import Callable, Sequence
from typing import Any

import grpc

import grpclb
from benchmarks.common import (
    CALL_TIMEOUT_S,
    REQUEST,
    Config,
    Section,
    Table,
    Target,
    med_spread,
    median,
    native_round_robin_options,
    static_target,
    wait_ready,
)
from benchmarks.drive import unary
from benchmarks.report import figure, save_plot
from grpclb.testing import PodFleet

NAME = "spread"
TITLE = "Spread: calls per pod for each policy, 10 equal pods"
PODS = 10
THREADS = 8
HASH_KEY = "x-user"
# (label, grpclb settings or None for grpcio's native round_robin, calls carry a hash key)
POLICIES: tuple[tuple[str, dict[str, Any] | None, bool], ...] = (
    ("round_robin", {"policy": "round_robin"}, False),
    ("least_request", {"policy": "least_request"}, False),
    ("random", {"policy": "random"}, False),
    ("ring_hash", {"policy": "ring_hash", "hash_key": HASH_KEY}, True),
    ("maglev", {"policy": "maglev", "hash_key": HASH_KEY}, True),
    ("native round_robin (grpcio)", None, False),
)


def fixed_calls(call: Callable[[int], Any], total: int, threads: int) -> int:
    """``total`` calls over ``threads`` threads (call i on thread i mod threads); errors."""
    errors = [0] * threads

    def worker(index: int) -> None:
        for i in range(index, total, threads):
            try:
                call(i)
            except grpc.RpcError:
                errors[index] += 1

    pool = [threading.Thread(target=worker, args=(t,), daemon=True) for t in range(threads)]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join(timeout=120)
    return sum(errors)


def _one_run(
    fleet: PodFleet, settings: dict[str, Any] | None, keyed: bool, calls: int, seed: int
) -> tuple[list[int], int]:
    target = static_target(fleet.addresses)
    if settings is None:
        channel: Any = grpc.insecure_channel(target, options=native_round_robin_options())
        grpc.channel_ready_future(channel).result(timeout=20)
    else:
        channel = grpclb.channel(target, **settings)
        wait_ready(channel, PODS)
    try:
        call_unary = unary(channel)
        rng = random.Random(seed)
        keys = [f"user-{rng.getrandbits(48)}" for _ in range(calls)]
        if settings is None:  # let native round_robin connect every pod before counting
            for _ in range(4 * PODS):
                call_unary(REQUEST, timeout=CALL_TIMEOUT_S)

        def call(i: int) -> None:
            metadata = ((HASH_KEY, keys[i]),) if keyed else None
            call_unary(REQUEST, timeout=CALL_TIMEOUT_S, metadata=metadata)

        fleet.reset_stats()
        errors = fixed_calls(call, calls, THREADS)
        counts = fleet.counts()
        return [counts[a] for a in fleet.addresses], errors
    finally:
        channel.close()


def run(cfg: Config) -> Section:
    calls, reps = cfg.pick(6000, 1000), cfg.pick(3, 1)
    runs: dict[str, list[list[int]]] = {label: [] for label, _, _ in POLICIES}
    errors = dict.fromkeys(runs, 0)
    with PodFleet(PODS, processes=True) as fleet:
        for rep in range(reps):
            for label, settings, keyed in POLICIES:
                counts, failed = _one_run(fleet, settings, keyed, calls, seed=rep * 1_000_003)
                runs[label].append(counts)
                errors[label] += failed
    section = Section(NAME, TITLE)
    section.intro = (
        f"{calls:,} unary calls per run from {THREADS} threads over {PODS} equal pod processes, "
        f"{reps} run(s) per policy; grpclb with default settings except the policy. Hash "
        f"policies get a distinct random `{HASH_KEY}` value per call, so their spread is the "
        "table's balance plus the sampling noise of the keys (about ±1/√(calls per pod)); "
        "round robin needs no luck: a full rotation gives every pod the same count."
    )
    rows = []
    for label, counts_list in runs.items():
        max_min = [max(c) / max(min(c), 1) for c in counts_list]
        max_mean = [max(c) / (sum(c) / len(c)) for c in counts_list]
        rows.append(
            (
                label,
                " ".join(str(n) for n in counts_list[0]),
                med_spread(max_min),
                med_spread(max_mean),
                errors[label],
            )
        )
        if label == "round_robin":
            section.targets.append(
                Target(
                    "Spread, round_robin over 10 pods: max/min calls",
                    median(max_min),
                    1.01,
                    False,
                    max_min,
                )
            )
    section.tables.append(
        Table(("Policy", "Calls per pod (first run)", "max/min", "max/mean", "Errors"), rows)
    )
    section.plots.append(_plot(cfg, runs))
    return section


def _plot(cfg: Config, runs: dict[str, list[list[int]]]) -> tuple[str, str]:
    fig, axes = figure(1, 1, width=8.0, height=3.8)
    ax = axes[0][0]
    labels = list(runs)
    width = 0.8 / PODS
    for pod in range(PODS):
        shares = [_share(runs[label][0], pod) for label in labels]
        xs = [i - 0.4 + (pod + 0.5) * width for i in range(len(labels))]
        ax.bar(xs, shares, width=width, color=f"C{pod % 10}")
    ax.axhline(1.0, color="black", linewidth=0.6)
    ax.set_xticks(range(len(labels)), labels, fontsize=8)
    ax.set_ylabel("calls / mean calls per pod")
    ax.set_title("One bar per pod (127.0.0.2 … 127.0.0.11), first run", fontsize=9)
    ax.grid(axis="y", alpha=0.3)
    return save_plot(cfg, fig, "spread.png", "Calls per pod relative to the mean, per policy")


def _share(counts: Sequence[int], pod: int) -> float:
    return counts[pod] / (sum(counts) / len(counts))
