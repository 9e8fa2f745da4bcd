"""Scenario 6: consistent hashing, key movement and balance (pure: tables driven directly).

For N pods, a set of keys is assigned with the table over N pods and again
after one pod joins (N + 1) or leaves (N - 1). The ideal movement is what the
changed pod must take or give back: 1/(N + 1) of the keys on a join, 1/N on a
leave. Each change is tried with several different pods and the median reported.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Callable, Sequence

from benchmarks.common import Config, Section, Table, Target, median, spread
from benchmarks.report import figure, save_plot
from grpclb.config.settings import Settings
from grpclb.core.hashing import HashTable, MaglevTable, RingHashTable, hash_key

NAME = "hashing"
TITLE = "Consistent hashing: key movement and balance (ring_hash, maglev)"
SIZES = (10, 100)
DEFAULTS = Settings()
TABLES: dict[str, Callable[[Sequence[str]], HashTable]] = {
    "ring_hash": lambda a: RingHashTable(a, DEFAULTS.ring_points_per_endpoint),
    "maglev": lambda a: MaglevTable(a, DEFAULTS.maglev_table_size),
}


def addresses(n: int, first: int = 0) -> list[str]:
    """Pod addresses as a headless service would list them (no socket is ever opened)."""
    return [f"127.0.{(i + first) // 250}.{(i + first) % 250 + 2}:9000" for i in range(n)]


def owners(table: HashTable, members: Sequence[str], hashes: Sequence[int]) -> list[str]:
    """The pod each key maps to (the first of its walk)."""
    return [members[next(iter(table.walk(h)))] for h in hashes]


def moved(before: Sequence[str], after: Sequence[str]) -> float:
    return sum(1 for a, b in zip(before, after, strict=True) if a != b) / len(before)


def run(cfg: Config) -> Section:
    keys = cfg.pick(100_000, 20_000)
    trials = cfg.pick(8, 2)
    hashes = [hash_key(f"user-{i}") for i in range(keys)]
    rng = random.Random(6)
    movement: dict[tuple[str, int, str], list[float]] = {}
    balance: dict[tuple[str, int], float] = {}
    noise: dict[int, float] = {}
    for name, build in TABLES.items():
        for n in SIZES:
            pods = addresses(n)
            base = owners(build(pods), pods, hashes)
            counts = Counter(base)
            balance[(name, n)] = max(counts.values()) / (keys / n)
            if n not in noise:  # a perfect hash: only the keys' sampling noise is left
                uniform = Counter(rng.randrange(n) for _ in range(keys))
                noise[n] = max(uniform.values()) / (keys / n)
            joins, leaves = [], []
            for trial in range(trials):
                joined = [*pods, addresses(1, first=n + trial)[0]]
                joins.append(moved(base, owners(build(joined), joined, hashes)) * (n + 1))
                gone = rng.randrange(n)
                left = pods[:gone] + pods[gone + 1 :]
                leaves.append(moved(base, owners(build(left), left, hashes)) * n)
            movement[(name, n, "join")] = joins
            movement[(name, n, "leave")] = leaves
    section = Section(NAME, TITLE)
    section.intro = (
        f"{keys:,} keys (`user-0`, `user-1`, ... hashed as grpclb hashes a metadata value), "
        f"tables with grpclb's defaults: {DEFAULTS.ring_points_per_endpoint} ring points per "
        f"pod, a Maglev table of {DEFAULTS.maglev_table_size} slots. *Moved / ideal* is the "
        "share of keys whose pod changed over the share the joining or leaving pod must own "
        f"(1/(N+1) or 1/N); 1.0 is minimal disruption. Median over {trials} different joining "
        "and leaving pods, range in brackets. *Balance* is the busiest pod's keys over the "
        "mean; in brackets the same for a perfect hash (keys thrown uniformly at random), "
        "which is the sampling noise of this many keys."
    )
    rows = []
    for name in TABLES:
        for n in SIZES:
            for change in ("join", "leave"):
                values = movement[(name, n, change)]
                ideal = 1 / (n + 1) if change == "join" else 1 / n
                mid = median(values)
                rows.append(
                    (
                        name,
                        n,
                        change,
                        f"{100 * ideal:.2f} %",
                        f"{100 * mid * ideal:.2f} %",
                        f"{mid:.3f} [{spread(values)}]",
                        f"{balance[(name, n)]:.3f} ({noise[n]:.3f})",
                    )
                )
                if name == "ring_hash":
                    section.targets.append(
                        Target(
                            f"ring_hash key movement, one pod {change}s N={n}: moved / ideal",
                            mid,
                            1.1,
                            False,
                            values,
                        )
                    )
    section.tables.append(
        Table(
            (
                "Table",
                "N",
                "Change",
                "Ideal moved",
                "Moved",
                "Moved / ideal",
                "Balance max/mean (perfect hash)",
            ),
            rows,
        )
    )
    section.notes.append(
        "A ring point's position depends only on its pod's address, so a joining pod takes "
        "keys only for itself and a leaving one gives back only its own: ring_hash moves the "
        "minimum by construction, and its moved/ideal ratio is that pod's share of the ring. "
        "Maglev trades a little extra movement for near-perfect balance."
    )
    section.plots.append(_plot(cfg, movement, balance))
    return section


def _plot(
    cfg: Config,
    movement: dict[tuple[str, int, str], list[float]],
    balance: dict[tuple[str, int], float],
) -> tuple[str, str]:
    fig, axes = figure(2, 1, width=5.0, height=3.4)
    left, right = axes[0][0], axes[0][1]
    labels = [f"{name}\nN={n} {change}" for name, n, change in movement]
    means = [median(v) for v in movement.values()]
    left.bar(
        range(len(labels)),
        means,
        color=["tab:blue" if "ring" in label else "tab:green" for label in labels],
    )
    for i, values in enumerate(movement.values()):
        left.scatter([i] * len(values), values, color="black", s=8, zorder=3)
    left.axhline(1.0, color="black", linewidth=0.6)
    left.axhline(1.1, color="tab:red", linestyle="--", linewidth=1, label="target 1.1 (ring_hash)")
    left.set_xticks(range(len(labels)), labels, fontsize=6)
    left.set_ylabel("keys moved / ideal (1/N)")
    left.legend(fontsize=7)
    names = [f"{name} N={n}" for name, n in balance]
    right.bar(range(len(names)), list(balance.values()), color="tab:gray")
    right.axhline(1.0, color="black", linewidth=0.6)
    right.set_ylim(0.9, max(balance.values()) * 1.05)
    right.set_xticks(range(len(names)), names, fontsize=7)
    right.set_ylabel("busiest pod's keys / mean")
    for ax in (left, right):
        ax.grid(axis="y", alpha=0.3)
    return save_plot(cfg, fig, "hashing.png", "Key movement on one pod joining or leaving; balance")
