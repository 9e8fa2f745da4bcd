"""Scenario 4: Envoy's round robin vs least request experiment, reproduced with grpclb.

Ten pods, one of them ten times slower; each pod serves with two workers, so
calls past two wait in its queue (latency grows with in-flight calls). An
open-loop client offers a fixed rate of calls that rises step by step; each
call's latency runs from the moment it was due to be sent (so a late client
cannot hide queueing), and a call that misses its 1 s deadline counts as an
error with its time to failure.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import grpc
import grpc.aio

import grpclb.aio
from benchmarks.common import (
    REQUEST,
    Config,
    Section,
    Table,
    Target,
    fmt_ms,
    median,
    percentile,
    spread,
    static_target,
    wait_ready_async,
)
from benchmarks.drive import run_async, unary
from benchmarks.podhost import PodHost
from benchmarks.report import figure, save_plot
from grpclb.testing.pods import pick_port

NAME = "unequal"
TITLE = "Unequal pods: round_robin vs least_request as load rises (Envoy's experiment)"
PODS = 10
WORKERS = 2
FAST_MS, SLOW_MS = 20, 200
DEADLINE_S = 1.0
POLICIES = ("round_robin", "least_request")


@dataclass
class Run:
    latencies_ms: list[float]
    errors: int
    slow_share: float  # of successful calls, the share the slow pod served

    def p(self, q: float) -> float:
        return percentile(self.latencies_ms, q)

    @property
    def error_rate(self) -> float:
        return self.errors / max(len(self.latencies_ms), 1)


async def offer(call: Callable[..., Any], rate: float, seconds: float, slow: str) -> Run:
    """Send ``rate`` calls per second for ``seconds``, on schedule whatever the replies do."""
    latencies: list[float] = []
    errors = slow_calls = 0
    count = int(rate * seconds)
    start = time.perf_counter() + 0.02

    async def one(due: float) -> None:
        nonlocal errors, slow_calls
        try:
            reply = await call(REQUEST, timeout=DEADLINE_S)
            slow_calls += reply.pod == slow
        except grpc.RpcError:
            errors += 1
        latencies.append((time.perf_counter() - due) * 1000)

    tasks = []
    for i in range(count):
        due = start + i / rate
        wait = due - time.perf_counter()
        if wait > 0:
            await asyncio.sleep(wait)
        tasks.append(asyncio.ensure_future(one(due)))
    await asyncio.wait_for(asyncio.gather(*tasks), DEADLINE_S + 30)
    ok = max(count - errors, 1)
    return Run(latencies, errors, slow_calls / ok)


async def _measure(
    addresses: list[str], loads: list[int], reps: int, seconds: float, slow: str
) -> dict[str, dict[int, list[Run]]]:
    target = static_target(addresses)
    # Outlier detection off: late calls would otherwise get the slow pod ejected for 30 s,
    # and this compares the policies themselves (as Envoy's experiment did).
    channels = {
        p: grpclb.aio.channel(target, policy=p, consecutive_failures=0, success_rate_ejection=False)
        for p in POLICIES
    }
    results: dict[str, dict[int, list[Run]]] = {p: {load: [] for load in loads} for p in POLICIES}
    try:
        for channel in channels.values():
            await wait_ready_async(channel, PODS)
        stubs = {p: unary(c) for p, c in channels.items()}
        for stub in stubs.values():
            await offer(stub, 40, 0.5, slow)  # warm-up
        for load in loads:
            for rep in range(reps):
                order = POLICIES if rep % 2 == 0 else POLICIES[::-1]
                for policy in order:
                    results[policy][load].append(await offer(stubs[policy], load, seconds, slow))
                    await asyncio.sleep(0.3)  # let queued calls on the slow pod end
    finally:
        for channel in channels.values():
            await channel.close()
    return results


def run(cfg: Config) -> Section:
    loads = cfg.pick([25, 50, 75, 100, 125, 150], [50, 150])
    reps, seconds = cfg.pick(3, 1), cfg.pick(3.5, 2.5)
    hosts = [f"127.0.0.{2 + i}" for i in range(PODS)]
    port = pick_port(hosts)
    with PodHost(hosts, port, WORKERS) as host:
        for pod in host.pods:
            pod.set_mode("slow", FAST_MS)
        slow_pod = host.pods[-1]
        slow_pod.set_mode("slow", SLOW_MS)
        results = run_async(_measure(host.addresses(), loads, reps, seconds, slow_pod.address))
    section = Section(NAME, TITLE)
    section.intro = (
        f"{PODS} pods on 127.0.0.2 to 127.0.0.11; each serves with {WORKERS} workers, so a pod "
        f"queues calls beyond {WORKERS} in flight and its latency grows with its load. Nine "
        f"answer after {FAST_MS} ms, one (127.0.0.11) after {SLOW_MS} ms: ten times slower "
        f"(capacity {WORKERS * 1000 // FAST_MS}/s per fast pod, {WORKERS * 1000 // SLOW_MS}/s "
        "for the slow one). An open-loop client (`grpclb.aio`, one channel per policy, outlier "
        "ejection off so that the policies alone are compared, defaults otherwise) offers a "
        f"fixed rate for {seconds:g} s per step, {reps} run(s) per policy and step, "
        "alternating the policies. Latency counts from when a call was due; "
        f"a call past its {DEADLINE_S:g} s deadline is an error and counts at its time to "
        "failure. grpclb has no latency-aware policy beyond least_request; `random` behaves "
        "like round_robin here. Round robin keeps sending the slow pod a tenth of the calls, "
        f"so once the offered rate passes {10 * WORKERS * 1000 // SLOW_MS}/s its queue grows "
        "without bound; least request sees the queue as in-flight calls and steers away."
    )
    rows = []
    for load in loads:
        for policy in POLICIES:
            runs = results[policy][load]
            rows.append(
                (
                    f"{load}/s",
                    policy,
                    *(fmt_ms(median([r.p(q) for r in runs])) for q in (50, 90, 99)),
                    f"{100 * median([r.error_rate for r in runs]):.2f} %",
                    f"{100 * median([r.slow_share for r in runs]):.1f} %",
                    spread([r.p(99) for r in runs], "{:.0f}"),
                )
            )
    section.tables.append(
        Table(
            (
                "Offered load",
                "Policy",
                "p50",
                "p90",
                "p99",
                "Errors",
                "Share on slow pod",
                "p99 range over runs (ms)",
            ),
            rows,
            "Medians over runs.",
        )
    )
    top = loads[-1]
    ratios = [
        lr.p(99) / rr.p(99)
        for rr, lr in zip(results["round_robin"][top], results["least_request"][top], strict=True)
    ]
    section.targets.append(
        Target(
            f"Unequal pods at {top}/s: least_request p99 / round_robin p99",
            median(ratios),
            0.5,
            False,
            ratios,
        )
    )
    section.plots.append(_plot(cfg, loads, results))
    return section


def _plot(
    cfg: Config, loads: list[int], results: dict[str, dict[int, list[Run]]]
) -> tuple[str, str]:
    fig, axes = figure(4, 1, width=3.6, height=3.4)
    colors = {"round_robin": "tab:orange", "least_request": "tab:blue"}
    for ax, q in zip(axes[0][:3], (50, 90, 99), strict=True):
        for policy in POLICIES:
            values = [[r.p(q) for r in results[policy][load]] for load in loads]
            meds = [median(v) for v in values]
            low = [m - min(v) for m, v in zip(meds, values, strict=True)]
            high = [max(v) - m for m, v in zip(meds, values, strict=True)]
            ax.errorbar(
                loads,
                meds,
                yerr=[low, high],
                marker="o",
                ms=3,
                capsize=2,
                color=colors[policy],
                label=policy,
            )
        ax.set_yscale("log")
        ax.set_title(f"p{q} latency (ms)", fontsize=9)
    err_ax = axes[0][3]
    for policy in POLICIES:
        rates = [100 * median([r.error_rate for r in results[policy][load]]) for load in loads]
        err_ax.plot(loads, rates, marker="o", ms=3, color=colors[policy], label=policy)
    err_ax.set_title("errors (%, deadline 1 s)", fontsize=9)
    for ax in axes[0]:
        ax.set_xlabel("offered calls/s")
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    return save_plot(
        cfg,
        fig,
        "unequal.png",
        "Latency percentiles and errors as offered load rises, one pod 10x slower",
    )
