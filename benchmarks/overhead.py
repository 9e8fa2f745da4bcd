"""Scenario 1: what grpclb costs per call, against a plain grpcio channel to the same pod.

With one pod there is nothing to balance, so every difference is overhead. The
pod runs in its own process, so this process's CPU time is the client's alone.
"""

from __future__ import annotations

import asyncio

import grpc
import grpc.aio

import grpclb
import grpclb.aio
from benchmarks.common import (
    MEDIANS_NOTE,
    Config,
    Section,
    Table,
    Target,
    fmt_rate,
    med_spread,
    median,
    static_target,
    wait_ready,
    wait_ready_async,
)
from benchmarks.drive import (
    Throughput,
    aio_load,
    alternated,
    alternated_async,
    caller,
    run_async,
    sync_load,
    unary,
)
from benchmarks.report import figure, save_plot
from grpclb.testing import ProcessPod
from grpclb.testing.pods import pick_port

NAME = "overhead"
TITLE = "Overhead: grpclb vs a plain grpcio channel, one pod"
HOST = "127.0.0.2"
Pairs = list[tuple[Throughput, Throughput]]


def _sync_pairs(cfg: Config, address: str, threads: int, reps: int, seconds: float) -> Pairs:
    plain = grpc.insecure_channel(address)
    balanced = grpclb.channel(static_target([address]))
    try:
        wait_ready(balanced, 1)
        calls = [caller(unary(channel)) for channel in (plain, balanced)]
        for call in calls:  # warm-up: connections, registrations, caches
            sync_load(call, threads, cfg.pick(0.5, 0.2))
        return alternated(
            reps,
            lambda: sync_load(calls[0], threads, seconds),
            lambda: sync_load(calls[1], threads, seconds),
        )
    finally:
        balanced.close()
        plain.close()


async def _aio_pairs(address: str, tasks: int, reps: int, seconds: float, warm: float) -> Pairs:
    plain = grpc.aio.insecure_channel(address)
    balanced = grpclb.aio.channel(static_target([address]))
    try:
        await asyncio.wait_for(plain.channel_ready(), 20)
        await wait_ready_async(balanced, 1)
        calls = [caller(unary(channel)) for channel in (plain, balanced)]
        for call in calls:
            await aio_load(call, tasks, warm)
        return await alternated_async(
            reps,
            lambda: aio_load(calls[0], tasks, seconds),
            lambda: aio_load(calls[1], tasks, seconds),
        )
    finally:
        await balanced.close()
        await plain.close()


def measure(cfg: Config, address: str) -> dict[str, Pairs]:
    """(plain, grpclb) throughput pairs for each mode; shared with the hot-path scenario."""
    reps, seconds = cfg.pick(16, 2), cfg.pick(0.6, 0.4)
    return {
        "sync, 1 thread": _sync_pairs(cfg, address, 1, reps, seconds),
        "sync, 8 threads": _sync_pairs(cfg, address, 8, reps, seconds),
        "aio, 100 concurrent": run_async(
            _aio_pairs(address, 100, reps, seconds, cfg.pick(0.5, 0.2))
        ),
    }


def run(cfg: Config) -> Section:
    port = pick_port([HOST])
    with ProcessPod(HOST, port) as pod:
        results = measure(cfg, pod.address)
    section = Section(NAME, TITLE)
    section.intro = (
        "Unary calls per second through `grpclb.channel` / `grpclb.aio.channel` (default "
        "settings, one pod, so balancing is pure overhead) and through a plain "
        "`grpc.insecure_channel` / `grpc.aio.insecure_channel` to the same pod. The pod is a "
        "separate process (`ProcessPod`); each call carries a 5 s deadline."
    )
    rows = []
    ratios_by_mode: dict[str, list[float]] = {}
    for mode, pairs in results.items():
        ratios = [b.rate / a.rate for a, b in pairs]
        ratios_by_mode[mode] = ratios
        cpu_added = [b.cpu_us_per_call - a.cpu_us_per_call for a, b in pairs]
        added = [1e6 / b.rate - 1e6 / a.rate for a, b in pairs]
        errors = sum(a.errors + b.errors for a, b in pairs)
        rows.append(
            (
                mode,
                fmt_rate(median([a.rate for a, _ in pairs])),
                fmt_rate(median([b.rate for _, b in pairs])),
                med_spread(ratios),
                med_spread(added, "{:+.1f}"),
                f"{median([a.cpu_us_per_call for a, _ in pairs]):.0f} / "
                f"{median([b.cpu_us_per_call for _, b in pairs]):.0f}",
                med_spread(cpu_added, "{:+.1f}"),
                errors,
            )
        )
        section.targets.append(
            Target(
                f"Overhead, {mode}: grpclb / plain throughput",
                median(ratios),
                0.97,
                True,
                ratios,
            )
        )
    section.tables.append(
        Table(
            (
                "Mode",
                "Plain",
                "grpclb",
                "Ratio grpclb/plain",
                "Added wall µs per call",
                "Client CPU µs/call plain / grpclb",
                "Added CPU µs per call",
                "Errors",
            ),
            rows,
        )
    )
    section.notes.append(MEDIANS_NOTE)
    section.notes.append(
        "*Added wall µs per call* is `1/throughput(grpclb) - 1/throughput(plain)`: the added "
        "latency of one call for one thread, the added time per completed call otherwise."
    )
    section.plots.append(_plot(cfg, results, ratios_by_mode))
    section.extra["results"] = results
    return section


def _plot(
    cfg: Config, results: dict[str, Pairs], ratios: dict[str, list[float]]
) -> tuple[str, str]:
    fig, axes = figure(2, 1, width=5.2)
    left, right = axes[0][0], axes[0][1]
    modes = list(results)
    for i, mode in enumerate(modes):
        pairs = results[mode]
        left.scatter([i - 0.12] * len(pairs), [a.rate for a, _ in pairs], color="tab:gray", s=14)
        left.scatter([i + 0.12] * len(pairs), [b.rate for _, b in pairs], color="tab:blue", s=14)
        right.scatter([i] * len(ratios[mode]), ratios[mode], color="tab:blue", s=14)
    left.scatter([], [], color="tab:gray", label="plain grpcio")
    left.scatter([], [], color="tab:blue", label="grpclb")
    left.set_ylabel("calls/s (each dot one run)")
    left.legend(fontsize=8)
    right.axhline(0.97, color="tab:red", linestyle="--", linewidth=1, label="target 0.97")
    right.axhline(1.0, color="black", linewidth=0.5)
    right.set_ylabel("grpclb / plain (each dot one pair)")
    right.legend(fontsize=8)
    for ax in (left, right):
        ax.set_xticks(range(len(modes)), modes, fontsize=8)
        ax.grid(axis="y", alpha=0.3)
    return save_plot(cfg, fig, "overhead.png", "Throughput per run and ratio per pair, one pod")
