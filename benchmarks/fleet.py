"""Scenario: big fleets: start-up against pod count, memory per pod, subsetting's connections.

The pods are loopback addresses served by one grpcio server on 0.0.0.0 in a
child process, named by a real dnsmasq, as in the churn scenario.

- Start-up: a new sync channel, from creation until every pod is READY, at 10,
  100 and 1,000 pods; with the number of picker snapshots built meanwhile
  (coalesced: it should not grow with the pod count).
- Memory: the process's resident memory before the channel and once its pods
  are READY, per pod (grpcio's channel and connection included).
- Subsetting: 40 asyncio channels with ``subset_size=20`` over 300 pods;
  connections per pod counted by the kernel (``/proc/net/tcp``) on the server's
  port; then one pod replaced: subset entries changed and clients touched.
"""

from __future__ import annotations

import asyncio
import gc
import os
import time
from collections import Counter
from typing import Any

import grpclb
import grpclb.aio
from benchmarks.churn import Fleet
from benchmarks.common import Config, Section, Table, Target, ready_pods
from benchmarks.report import figure, save_plot
from grpclb.testing import SERVICE_NAME
from grpclb.testing.crowd import established_by_local_address

NAME = "fleet"
TITLE = "Big fleets: start-up against pod count, memory per pod, connections with subsetting"
SIZES = (10, 100, 1000)
POLICIES = ("least_request", "ring_hash")
CLIENTS, SUBSET_PODS, SUBSET = 40, 300, 20
PAGE = os.sysconf("SC_PAGE_SIZE")


def rss_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * PAGE


def start_up(fleet: Fleet, pods: int, policy: str) -> tuple[float, int, int]:
    """(seconds to all READY, snapshots built by then, resident bytes added per pod)."""
    hashing = {"hash_key": "x-user"} if policy == "ring_hash" else {}
    fleet.dns.set_records(SERVICE_NAME, fleet.hosts[:pods])
    gc.collect()
    before = rss_bytes()
    t0 = time.perf_counter()
    channel = grpclb.channel(fleet.target, policy=policy, **hashing)
    try:
        deadline = t0 + 30
        while ready_pods(channel) < pods:
            if time.perf_counter() > deadline:
                raise TimeoutError(f"{pods} pods not ready in 30 s")
            time.sleep(0.02 if pods < 1000 else 0.05)
        seconds = time.perf_counter() - t0
        rebuilds = channel._balancer.rebuilds
        gc.collect()
        per_pod = (rss_bytes() - before) // pods
        return seconds, rebuilds, per_pod
    finally:
        channel.close()


async def subsetting(fleet: Fleet) -> dict[str, Any]:
    fleet.dns.set_records(SERVICE_NAME, fleet.hosts[:SUBSET_PODS])
    channels = [
        grpclb.aio.channel(
            fleet.target,
            policy="round_robin",
            subset_size=SUBSET,
            subset_seed=seed,
            dns_refresh_interval=0.5,
        )
        for seed in range(1, CLIENTS + 1)
    ]
    try:
        deadline = time.monotonic() + 30
        for channel in channels:
            await channel.channel_ready()
        while not all(ready_pods(c) == SUBSET for c in channels):
            if time.monotonic() > deadline:
                raise TimeoutError("subsetting clients not ready in 30 s")
            await asyncio.sleep(0.02)
        served = established_by_local_address(fleet.port)
        before = [{r.address for r in c.stats() if r.state != "draining"} for c in channels]
        held = sorted(before[0])[0].rsplit(":", 1)[0]
        hosts = list(fleet.hosts[:SUBSET_PODS])
        hosts[hosts.index(held)] = fleet.hosts[SUBSET_PODS]  # a fresh address
        fleet.dns.set_records(SERVICE_NAME, hosts)
        marks = [c.stats().resolutions for c in channels]
        while not all(c.stats().resolutions >= m + 2 for c, m in zip(channels, marks, strict=True)):
            if time.monotonic() > deadline + 10:
                raise TimeoutError("subsetting clients did not re-resolve")
            await asyncio.sleep(0.05)
        after = [{r.address for r in c.stats() if r.state != "draining"} for c in channels]
        changes = [len(a ^ b) for a, b in zip(before, after, strict=True)]
        return {"served": served, "changes": changes}
    finally:
        await asyncio.gather(*(c.close() for c in channels))


def run(cfg: Config) -> Section:
    sizes = cfg.pick(SIZES, (*SIZES[:2], 300))
    fleet = Fleet(max(SIZES))
    startup: dict[tuple[str, int], tuple[float, int, int]] = {}
    try:
        for policy in POLICIES:
            for pods in sizes:
                startup[(policy, pods)] = start_up(fleet, pods, policy)
        subset = asyncio.run(subsetting(fleet))
    finally:
        fleet.close()
    section = Section(NAME, TITLE)
    section.intro = (
        "Pods are loopback addresses served by one grpcio server on 0.0.0.0 in a child "
        "process, named by dnsmasq. *Start-up* is a new sync channel's time from creation "
        "to every pod READY (polled every 20-50 ms), with the picker snapshots built by then. "
        "*Memory per pod* is the growth of this process's resident memory from before the "
        "channel to all pods READY, divided by the pods (grpcio's channel and connection "
        "included, so it is the real cost of a pod to a client). *Subsetting*: "
        f"{CLIENTS} asyncio channels, `subset_size={SUBSET}`, seeds 1 to {CLIENTS}, over "
        f"{SUBSET_PODS} pods; connections per pod as the kernel lists them on the server's "
        "port; then one pod that the first client holds is replaced in DNS."
    )
    rows = []
    for (policy, pods), (seconds, rebuilds, per_pod) in startup.items():
        rows.append(
            (policy, f"{pods:,}", f"{seconds:.2f} s", rebuilds, f"{per_pod / 1024:.0f} KiB")
        )
    section.tables.append(
        Table(("Policy", "Pods", "All ready", "Snapshots built", "Memory per pod"), rows)
    )
    biggest = max(sizes)
    for policy in POLICIES:
        section.targets.append(
            Target(
                f"Fleet: {policy} all {biggest:,} pods ready (s)",
                startup[(policy, biggest)][0],
                2.0,
                False,
            )
        )
    served: Counter[str] = subset["served"]
    changes: list[int] = subset["changes"]
    mean = CLIENTS * SUBSET / SUBSET_PODS
    used = len(served) / SUBSET_PODS
    touched = sum(1 for n in changes if n) / CLIENTS
    section.tables.append(
        Table(
            ("Connections", "Max per pod", "Mean per pod", "Pods used", "Max entries changed",
             "Clients touched"),
            [(sum(served.values()), max(served.values()), f"{mean:.2f}", f"{used:.0%}",
              max(changes), f"{touched:.0%}")],
        )
    )  # fmt: skip
    section.targets += [
        Target("Subsetting: connections max per pod / mean", max(served.values()) / mean, 4.0,
               False),
        Target("Subsetting: share of pods used", used, 0.85, True),
        Target("Subsetting: subset entries changed by one replacement", max(changes), 2.0,
               False),
        Target("Subsetting: share of clients touched by one replacement", touched, 0.25, False),
        Target("Subsetting: connections per client", sum(served.values()) / CLIENTS, SUBSET,
               False),
    ]  # fmt: skip
    section.notes.append(
        "The machine is shared (2 cores, other jobs running): times move from run to run. "
        "Resident memory also counts whatever else the process allocated meanwhile."
    )
    section.plots.append(_plot(cfg, startup, sizes, served))
    return section


def _plot(
    cfg: Config,
    startup: dict[tuple[str, int], tuple[float, int, int]],
    sizes: tuple[int, ...],
    served: Counter[str],
) -> Any:
    fig, axes = figure(3, 1, width=3.4, height=3.2)
    for i, policy in enumerate(POLICIES):
        axes[0][0].plot(
            sizes, [startup[(policy, n)][0] for n in sizes], marker="o", color=f"C{i}", label=policy
        )
        axes[0][1].plot(
            sizes,
            [startup[(policy, n)][2] / 1024 for n in sizes],
            marker="o",
            color=f"C{i}",
            label=policy,
        )
    axes[0][0].axhline(2.0, color="red", linewidth=0.8, linestyle="--")
    for ax, label in ((axes[0][0], "seconds to all READY"), (axes[0][1], "KiB per pod")):
        ax.set_xscale("log")
        ax.set_xlabel("pods")
        ax.set_ylabel(label)
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7)
    per_pod = [served.get(h, 0) for h in sorted(served)] + [0] * (SUBSET_PODS - len(served))
    histogram = Counter(per_pod)
    axes[0][2].bar(sorted(histogram), [histogram[k] for k in sorted(histogram)])
    axes[0][2].set_xlabel(f"connections per pod ({CLIENTS} clients, subset {SUBSET})")
    axes[0][2].set_ylabel(f"pods (of {SUBSET_PODS})")
    axes[0][2].grid(alpha=0.3, axis="y")
    return save_plot(
        cfg, fig, "fleet.png", "Start-up time and memory per pod against pod count; "
        "connections per pod with subsetting"
    )  # fmt: skip
