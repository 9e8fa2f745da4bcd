"""Scenario 7: pick cost and memory per endpoint at 10, 100 and 1,000 endpoints.

Pickers are driven directly with small fake endpoint objects: no sockets, no
grpcio. The balancer core (pick, count in flight, release, learn the outcome)
is measured the same way, over a fake transport, since that is what a call
pays on top of the pick.
"""

from __future__ import annotations

import gc
import math
import random
import time
import tracemalloc
from collections.abc import Callable
from functools import partial
from typing import Any, TypeVar

import grpc

from benchmarks.common import Config, Section, Table, Target
from benchmarks.hashing import addresses
from benchmarks.report import figure, save_plot
from grpclb.config.settings import Settings
from grpclb.config.target import parse_target
from grpclb.core.balancer import Balancer
from grpclb.core.hashing import MaglevTable, RingHashTable, hash_key
from grpclb.core.pickers import HashPicker, LeastRequestPicker, RandomPicker, RoundRobinPicker
from grpclb.resolver import Resolution

NAME = "scale"
TITLE = "Scale: pick cost and memory per endpoint, 10 to 1,000 endpoints"
SIZES = (10, 100, 1000)
DEFAULTS = Settings()
HASHES = [hash_key(f"user-{i}") for i in range(1000)]
T = TypeVar("T")


class FakeEndpoint:
    """What a picker reads: an address and an in-flight count."""

    __slots__ = ("address", "in_flight")

    def __init__(self, address: str, in_flight: int) -> None:
        self.address, self.in_flight = address, in_flight


def _endpoints(n: int) -> list[FakeEndpoint]:
    rng = random.Random(n)
    return [FakeEndpoint(a, rng.randrange(4)) for a in addresses(n)]


def _hash_picker(table: Callable[[list[str]], Any]) -> Callable[[list[FakeEndpoint]], Any]:
    def build(eps: list[FakeEndpoint]) -> Any:
        return HashPicker(table([e.address for e in eps]), eps, [True] * len(eps), random.Random(1))

    return build


PICKERS: dict[str, Callable[[list[FakeEndpoint]], Any]] = {
    "round_robin": lambda eps: RoundRobinPicker(eps, random.Random(1)),
    "least_request": lambda eps: LeastRequestPicker(eps, random.Random(1), DEFAULTS.choice_count),
    "random": lambda eps: RandomPicker(eps, random.Random(1)),
    "ring_hash": _hash_picker(lambda a: RingHashTable(a, DEFAULTS.ring_points_per_endpoint)),
    "maglev": _hash_picker(lambda a: MaglevTable(a, DEFAULTS.maglev_table_size)),
}
HASHED = {"ring_hash", "maglev"}


def pick_seconds(picker: Any, hashed: bool, loops: int) -> float:
    """One timing of ``loops`` x 1,000 picks, in seconds (call overhead included)."""
    pick = picker.pick
    keys = HASHES if hashed else [None] * len(HASHES)
    t0 = time.perf_counter()
    for _ in range(loops):
        for key in keys:
            pick(key)
    return time.perf_counter() - t0


def measured(build: Callable[[], T]) -> tuple[T, int, int]:
    """The built object, the bytes it keeps and the peak bytes while building (tracemalloc)."""
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        built = build()
        current, peak = tracemalloc.get_traced_memory()
        return built, current - before, peak - before
    finally:
        tracemalloc.stop()


class _FakeTransport:
    """The I/O a balancer asks for, done by nobody; every connection reported READY."""

    def __init__(self) -> None:
        self.watched: list[Any] = []

    def dial(self, connection: Any) -> object:
        return object()

    def watch(self, connection: Any) -> None:
        self.watched.append(connection)

    def connect(self, connection: Any) -> None:
        pass

    def close_connection(self, connection: Any) -> None:
        pass

    def wake(self) -> None:
        pass


def balancer(policy: str, n: int) -> Balancer:
    """A balancer core over ``n`` READY endpoints and no I/O."""
    pods = addresses(n)
    transport = _FakeTransport()
    hashing = {"hash_key": "x-user"} if policy in HASHED else {}
    settings = Settings.load({"policy": policy, **hashing})
    core = Balancer(parse_target("ipv4:" + ",".join(pods)), settings, transport)
    core.update(Resolution(tuple(pods)))
    for connection in transport.watched:
        core.connectivity_changed(connection, grpc.ChannelConnectivity.READY)
    # What a channel's background thread does next: the coalesced snapshot rebuild and,
    # for a big fleet's ring or Maglev table, its build in slices.
    core.maintain()
    while core._pickers.table_wanted:
        core.maintain()
    return core


def call_seconds(core: Balancer, hashed: bool, loops: int) -> float:
    """One timing of ``loops`` x 1,000 ``start_call`` + ``Attempt.release(OK)``, in seconds."""
    start, ok = core.start_call, grpc.StatusCode.OK
    keys = HASHES if hashed else [None] * len(HASHES)
    t0 = time.perf_counter()
    for _ in range(loops):
        for key in keys:
            attempt = start(key)
            assert attempt is not None
            attempt.release(ok)
    return time.perf_counter() - t0


def best_ns(
    timers: dict[tuple[str, int], Callable[[int], float]], loops: int, rounds: int
) -> dict[tuple[str, int], float]:
    """Best time per operation of each timer, the timers interleaved round after round."""
    best = dict.fromkeys(timers, math.inf)
    for _ in range(rounds):
        for key, timer in timers.items():
            best[key] = min(best[key], timer(loops) / (loops * len(HASHES)) * 1e9)
    return best


def run(cfg: Config) -> Section:
    loops, rounds = cfg.pick(20, 5), cfg.pick(7, 3)
    # A smoke run skips tracemalloc (slow) and the biggest balancer cores.
    measure_memory, core_sizes = not cfg.quick, cfg.pick(SIZES, SIZES[:2])
    pickers: dict[tuple[str, int], Any] = {}
    memory: dict[tuple[str, int], tuple[int, int]] = {}
    cores: dict[tuple[str, int], Balancer] = {}
    setup: dict[tuple[str, int], float] = {}
    for name, build in PICKERS.items():
        for n in SIZES:
            eps = _endpoints(n)
            if measure_memory:
                picker, kept, peak = measured(partial(build, eps))
                memory[(name, n)] = (kept, peak)
            else:
                picker = build(eps)
            pickers[(name, n)] = picker
            if n in core_sizes:
                t0 = time.perf_counter()
                cores[(name, n)] = balancer(name, n)
                setup[(name, n)] = time.perf_counter() - t0
    # What the core keeps per endpoint besides its picker: the same for every policy.
    core_bytes = {
        n: measured(partial(balancer, "round_robin", n))[1]
        for n in (SIZES if measure_memory else ())
    }
    pick = best_ns(
        {k: partial(pick_seconds, p, k[0] in HASHED) for k, p in pickers.items()},
        loops,
        rounds,
    )
    call = best_ns(
        {k: partial(call_seconds, c, k[0] in HASHED) for k, c in cores.items()},
        max(loops // 4, 1),
        rounds,
    )
    rows = []
    for name, n in pickers:
        kept, peak = memory.get((name, n), (-1, -1))
        rows.append(
            (
                name,
                f"{n:,}",
                f"{pick[(name, n)]:.0f} ns",
                f"{call[(name, n)] / 1000:.2f} µs" if (name, n) in call else "—",
                f"{kept / n:,.0f} B" if kept >= 0 else "—",
                f"{peak / 1024:,.0f} KiB" if peak >= 0 else "—",
                f"{core_bytes[n] / n:,.0f} B" if n in core_bytes else "—",
                f"{setup[(name, n)] * 1000:,.0f} ms" if (name, n) in setup else "—",
            )
        )
    picks = {name: [pick[(name, n)] for n in SIZES] for name in PICKERS}
    calls = {name: [call[(name, n)] for n in core_sizes] for name in PICKERS}
    section = Section(NAME, TITLE)
    section.intro = (
        f"Pick cost is the best of {rounds} timings of 1,000-pick loops, every (policy, size) "
        "timed in turn each round so that a busy moment hits them all; Python call overhead "
        "included; hash pickers get a different request hash each pick. *Core per call* is "
        "the balancer's `start_call` + `Attempt.release(OK)` over a fake transport: the pick, "
        "in-flight counting under the lock, outlier bookkeeping. Memory is measured with "
        "tracemalloc: what the picker keeps (for hash policies, the table too), the peak "
        "while building it, and what a round_robin balancer core keeps per endpoint "
        "(endpoint, connection and outlier records, picker; no grpcio channel). *Core set-up* "
        "is one DNS answer with N pods, then each pod reported READY one by one, then the "
        "background work that follows (one snapshot rebuild for the pods that became ready, "
        "and for a big fleet's ring or Maglev table its build in slices)."
    )
    section.tables.append(
        Table(
            (
                "Policy",
                "Endpoints",
                "Pick",
                "Core per call",
                "Picker memory per endpoint",
                "Peak while building",
                "Core memory per endpoint",
                "Core set-up",
            ),
            rows,
        )
    )
    for name, limit in (("round_robin", 1.5), ("least_request", 1.5)):
        growth = picks[name][-1] / picks[name][0]
        section.targets.append(
            Target(f"Scale (shape): {name} pick, 1,000 vs 10 endpoints", growth, limit, False)
        )
    # Logarithmic growth: log2 of the ring's size, 1,000 pods against 10.
    points = DEFAULTS.ring_points_per_endpoint
    log_ratio = math.log2(SIZES[-1] * points) / math.log2(SIZES[0] * points)
    growth = picks["ring_hash"][-1] / picks["ring_hash"][0]
    section.targets.append(
        Target(
            "Scale (shape): ring_hash pick, 1,000 vs 10 endpoints, over log growth",
            growth / log_ratio,
            1.5,
            False,
        )
    )
    section.notes.append(
        f"Shape checks: a *flat* pick costs at most 1.5x at 1,000 endpoints what it costs at "
        f"10; ring_hash's growth is divided by the growth of log2(ring size) ({log_ratio:.2f}x "
        "from 10 to 1,000 pods), so 1.0 means exactly logarithmic. Memory per endpoint of a "
        "Maglev table falls as pods are added because the table has a fixed size."
    )
    section.plots.append(_plot(cfg, picks, calls))
    return section


def _plot(cfg: Config, picks: dict[str, list[float]], cores: dict[str, list[float]]) -> Any:
    fig, axes = figure(2, 1, width=4.8, height=3.4)
    for i, name in enumerate(picks):
        axes[0][0].plot(SIZES, picks[name], marker="o", color=f"C{i}", label=name)
        sizes = SIZES[: len(cores[name])]
        axes[0][1].plot(sizes, [c / 1000 for c in cores[name]], marker="o", color=f"C{i}")
    axes[0][0].set_ylabel("ns per pick")
    axes[0][1].set_ylabel("µs per call (start + finish)")
    axes[0][0].set_title("picker alone", fontsize=9)
    axes[0][1].set_title("balancer core", fontsize=9)
    for ax in axes[0]:
        ax.set_xscale("log")
        ax.set_xlabel("endpoints")
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7)
    return save_plot(cfg, fig, "scale.png", "Pick and per-call core cost against endpoint count")
