"""Scenario: grpclb against the usual alternative, a proxy hop (nginx, HAProxy), same 5 pods.

Three paths to the same 5 pod processes: grpclb balancing in the client, and a
plain grpcio channel to nginx (``grpc_pass``, ``least_conn``) or to HAProxy
(HTTP/2 on both sides, ``balance leastconn``). Rounds run the three back to back
in every order in turn, so each comes first, second and last equally often;
each ratio compares runs of one round.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import grpc

import grpclb
from benchmarks.common import (
    Config,
    Section,
    Table,
    fmt_rate,
    load_average,
    med_spread,
    median,
    percentile,
    static_target,
    wait_ready,
)
from benchmarks.drive import caller, unary
from benchmarks.proxies import LISTEN_HOST, Proxies, Proxy
from benchmarks.report import figure, save_plot
from grpclb.testing import PodFleet
from grpclb.testing.pods import pick_port

NAME = "proxy"
TITLE = "grpclb vs a proxy hop: nginx and HAProxy in front of the same 5 pods"
PODS = 5
THREADS = 8
ARMS = ("grpclb", "nginx", "haproxy")
PROXIES = ARMS[1:]
COLORS = {"grpclb": "tab:blue", "nginx": "tab:green", "haproxy": "tab:orange"}
ORDERS = list(itertools.permutations(range(len(ARMS))))


@dataclass(frozen=True)
class Run:
    """One timed run of closed-loop unary calls on one path."""

    calls: int
    errors: int
    seconds: float
    client_cpu: float  # this process's CPU seconds, every thread included
    proxy_cpu: float  # the proxy's CPU seconds, every worker included; 0 without one
    p50_ms: float
    p99_ms: float

    @property
    def rate(self) -> float:
        return self.calls / self.seconds if self.seconds > 0 else 0.0

    def per_call_us(self, cpu_seconds: float) -> float:
        return cpu_seconds / self.calls * 1e6 if self.calls else float("nan")

    @property
    def client_us(self) -> float:
        return self.per_call_us(self.client_cpu)

    @property
    def proxy_us(self) -> float:
        return self.per_call_us(self.proxy_cpu)

    @property
    def total_us(self) -> float:
        return self.per_call_us(self.client_cpu + self.proxy_cpu)


Rounds = list[dict[str, Run]]


def timed_load(
    call: Callable[[], Any], threads: int, seconds: float, proxy_cpu: Callable[[], float]
) -> Run:
    """``threads`` threads calling back to back for ``seconds``, each call's latency kept."""
    latencies: list[list[float]] = [[] for _ in range(threads)]
    errors = [0] * threads
    start = threading.Barrier(threads + 1)
    end_at = [0.0]

    def worker(index: int) -> None:
        mine, failed = latencies[index], 0
        start.wait()
        end = end_at[0]
        now = time.perf_counter()
        while now < end:
            try:
                call()
            except grpc.RpcError:
                failed += 1
            done = time.perf_counter()
            mine.append(done - now)
            now = done
        errors[index] = failed

    pool = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(threads)]
    for thread in pool:
        thread.start()
    proxy0, cpu0, t0 = proxy_cpu(), time.process_time(), time.perf_counter()
    end_at[0] = t0 + seconds
    start.wait()
    for thread in pool:
        thread.join(timeout=seconds + 30)
    elapsed, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    proxy = proxy_cpu() - proxy0
    every = [latency * 1e3 for mine in latencies for latency in mine]
    failed = sum(errors)
    return Run(
        len(every) - failed,
        failed,
        elapsed,
        cpu,
        proxy,
        percentile(every, 50),
        percentile(every, 99),
    )


def _no_proxy() -> float:
    return 0.0


def _measure(addresses: Sequence[str], proxies: Sequence[Proxy], cfg: Config) -> Rounds:
    reps, seconds, warm = cfg.pick(12, 3), cfg.pick(1.2, 0.4), cfg.pick(0.5, 0.2)
    balanced = grpclb.channel(static_target(addresses), policy="least_request")
    plain = [grpc.insecure_channel(proxy.address) for proxy in proxies]
    try:
        wait_ready(balanced, len(addresses))
        for channel in plain:
            grpc.channel_ready_future(channel).result(timeout=20)
        # An arm: its call, and how to read its proxy's CPU time.
        arms = [(caller(unary(balanced)), _no_proxy)]
        arms += [(caller(unary(ch)), p.cpu_seconds) for ch, p in zip(plain, proxies, strict=True)]
        for call, cpu in arms:  # warm-up: connections, registrations, caches
            timed_load(call, THREADS, warm, cpu)
        rounds: Rounds = []
        for rep in range(reps):
            order = ORDERS[rep % len(ORDERS)]
            runs = {ARMS[i]: timed_load(arms[i][0], THREADS, seconds, arms[i][1]) for i in order}
            rounds.append(runs)
        return rounds
    finally:
        balanced.close()
        for channel in plain:
            channel.close()


def run(cfg: Config) -> Section:
    load_start = load_average()
    with PodFleet(PODS, processes=True) as fleet:
        addresses = fleet.addresses
        ports = [pick_port([LISTEN_HOST]) for _ in PROXIES]
        while ports[1] == ports[0]:
            ports[1] = pick_port([LISTEN_HOST])
        with Proxies(addresses, ports) as proxies:
            rounds = _measure(addresses, proxies.all, cfg)
            versions = proxies.versions
    section = Section(NAME, TITLE)
    _describe(section, cfg, addresses, versions, rounds)
    section.notes.append(
        f"Load average (1/5/15 min) at this scenario's start {load_start}, at its end "
        f"{load_average()}: other work on the machine shares its cores with the client, the "
        "proxies and the pods alike."
    )
    section.plots.append(_plot(cfg, rounds))
    section.extra["rounds"] = rounds
    return section


def _describe(
    section: Section,
    cfg: Config,
    addresses: Sequence[str],
    versions: Sequence[str],
    rounds: Rounds,
) -> None:
    section.intro = (
        f"{THREADS} threads of closed-loop unary calls over the same {PODS} pod processes "
        f"({addresses[0].split(':')[0]} to {addresses[-1].split(':')[0]}) by three paths: "
        '`grpclb.channel` on a static `ipv4:` target with `policy="least_request"`, and a '
        f"plain `grpc.insecure_channel` to a proxy on {LISTEN_HOST}: nginx (`grpc_pass` to "
        "an upstream group with `least_conn`, `keepalive` connections to the pods) or HAProxy "
        "(`proto h2` on the listener and on every server, `balance leastconn`). Both proxies "
        "are Debian's packages with their default worker counts (nginx `worker_processes "
        "auto`, HAProxy one thread per core), access logging off, connection reuse on both "
        f"sides. Versions: {' and '.join(versions)}. "
        f"{len(rounds)} rounds of {cfg.pick(1.2, 0.4):g} s per path; a round runs the three "
        "paths back to back, in each of the six orders in turn. Latency is each call's time "
        "as its thread saw it. *Client CPU* is this process's CPU time (grpcio's threads "
        "included); *proxy CPU* the proxy's, from `/proc/<pid>/stat` of its processes "
        "(workers and threads included). The pods' CPU is the same work on every path and "
        "is left out."
    )
    rows = []
    for arm in ARMS:
        runs = [r[arm] for r in rounds]
        proxied = arm != "grpclb"
        rows.append(
            (
                arm if arm == "grpclb" else f"grpcio → {arm}",
                fmt_rate(median([r.rate for r in runs])),
                f"{median([r.p50_ms for r in runs]):.2f} ms",
                f"{median([r.p99_ms for r in runs]):.2f} ms",
                f"{median([r.client_us for r in runs]):.0f}",
                f"{median([r.proxy_us for r in runs]):.0f}" if proxied else "none",
                f"{median([r.total_us for r in runs]):.0f}",
                sum(r.errors for r in runs),
            )
        )
    section.tables.append(
        Table(
            (
                "Path",
                "Calls/s",
                "p50",
                "p99",
                "Client CPU µs/call",
                "Proxy CPU µs/call",
                "Total CPU µs/call",
                "Errors",
            ),
            rows,
            "Medians over rounds:",
        )
    )
    ratio_rows = []
    for proxy in PROXIES:
        ratio_rows.append(
            (
                proxy,
                med_spread(_ratios(rounds, proxy, lambda r: r.rate)),
                med_spread(_ratios(rounds, proxy, lambda r: r.p50_ms)),
                med_spread(_ratios(rounds, proxy, lambda r: r.p99_ms)),
                med_spread(_ratios(rounds, proxy, lambda r: r.total_us)),
            )
        )
    section.tables.append(
        Table(
            (
                "grpclb over",
                "Throughput",
                "p50 latency",
                "p99 latency",
                "Total CPU per call (client alone / client + proxy)",
            ),
            ratio_rows,
            "grpclb's figure over the proxy path's, per round (median [range]); above 1 "
            "means more for grpclb:",
        )
    )
    section.notes.append(
        "Each ratio is the median of the ratios within rounds, which cancels drift that "
        "moves whole rounds; the per-path medians above need not divide into it exactly. "
        "CPU times are counted in clock ticks (10 ms on Linux), small against a run's "
        "total. On this machine the proxy shares the client's and the pods' cores, as a "
        "sidecar does; a proxy on a host of its own would cost the client's host less CPU "
        "but still add its hop to every call's latency."
    )


def _ratios(rounds: Rounds, proxy: str, value: Callable[[Run], float]) -> list[float]:
    return [value(r["grpclb"]) / value(r[proxy]) for r in rounds if value(r[proxy]) > 0]


def _plot(cfg: Config, rounds: Rounds) -> tuple[str, str]:
    fig, axes = figure(2, 2, width=4.6, height=3.2)
    panels: list[tuple[Any, str, Callable[[Run], float]]] = [
        (axes[0][0], "calls/s", lambda r: r.rate),
        (axes[0][1], "p50 latency (ms)", lambda r: r.p50_ms),
        (axes[1][0], "p99 latency (ms)", lambda r: r.p99_ms),
    ]
    for ax, label, value in panels:
        for i, arm in enumerate(ARMS):
            values = [value(r[arm]) for r in rounds]
            ax.scatter([i] * len(values), values, s=12, color=COLORS[arm], alpha=0.7)
            ax.hlines(median(values), i - 0.25, i + 0.25, color=COLORS[arm])
        ax.set_ylabel(f"{label} (dot: run, bar: median)", fontsize=8)
        if label.startswith("p99"):
            ax.set_yscale("log")  # one stalled run must not flatten the others
        else:
            ax.set_ylim(bottom=0)
    cpu = axes[1][1]
    client = [median([r[arm].client_us for r in rounds]) for arm in ARMS]
    proxy = [median([r[arm].proxy_us for r in rounds]) for arm in ARMS]
    cpu.bar(range(len(ARMS)), client, color="tab:gray", label="client")
    cpu.bar(range(len(ARMS)), proxy, bottom=client, color="tab:purple", label="proxy")
    cpu.set_ylabel("CPU µs per call (medians)", fontsize=8)
    cpu.legend(fontsize=8)
    for ax in (axes[0][0], axes[0][1], axes[1][0], cpu):
        ax.set_xticks(range(len(ARMS)), ARMS, fontsize=8)
        ax.set_xlim(-0.6, len(ARMS) - 0.4)
        ax.grid(axis="y", alpha=0.3)
    caption = f"grpclb and a proxy hop, {THREADS} threads of unary calls over {PODS} pods"
    return save_plot(cfg, fig, "proxy.png", caption)
