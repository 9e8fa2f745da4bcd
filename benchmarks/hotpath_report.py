"""The hot-path section's tables, and its reading of them (see ``hotpath``)."""

from __future__ import annotations

from dataclasses import dataclass

from benchmarks.common import Section, Table, Target
from benchmarks.sampling import DRIVER, Profile

Pure = tuple[float, float, list[tuple[str, float]], float]
FLAVOUR_OF_MODE = {
    "sync, 1 thread": "sync",
    "sync, 8 threads": "sync",
    "aio, 100 concurrent": "aio",
}
OWNER_ORDER = ("grpclb", "opentelemetry-api (called by grpclb)", "grpcio", "protobuf", DRIVER)

# What a function on the call path does per call, and what would make it cheaper. Only the
# functions a run finds among the costliest are shown, so a renamed one simply drops out.
# Keyed by name, or by "module path:name" where names are shared (``_why``).
WHY: dict[str, str] = {
    "start_call": "picks, then counts the attempt under the balancer lock (six in-flight and "
    "call counters; the lock taken with `acquire`/`release`, a third of the cost of `with`), "
    "reads `telemetry.enabled` and the OpenTelemetry context; keep one in-flight count per "
    "connection (the endpoint's is their sum) and move the call counters out of the lock",
    "release": "takes the lock again to release the counts and feeds every outcome to the "
    "outlier detector; on OK only `in_flight` and the success count need touching",
    "_blocking": "per attempt: a `tried` list, `time.monotonic()` twice for the deadline, "
    "`perf_counter` when telemetry is on, a try/finally; on a first attempt pass `timeout` "
    "through unchanged and allocate `tried` only on a retry",
    "_begin": "a `getpid()` system call per call (fork check), `request_hash` even without a "
    "hash key, a read of the wake-up version; check the pid with `os.register_at_fork` "
    "instead and skip hashing when `hash_key` is None",
    "trace_attempt": "asks OpenTelemetry for the current context on every attempt, to mark "
    "a recording span with the pod; a once-per-channel check of the global tracer provider "
    "would miss spans from a provider that is not the global one",
    "get_value": "OpenTelemetry context lookup behind `trace.get_current_span()`",
    "get_current": "OpenTelemetry context lookup behind `trace.get_current_span()`",
    "get_current_span": "called by `trace_attempt` on every call",
    "_remaining": "a second `time.monotonic()` per attempt, turning the deadline into a timeout",
    "_on": "looks the per-pod multicallable up by a 5-tuple key (hashed every call); cache it "
    "on the connection by the multicallable object instead",
    "_start": "one more Python call layer between `_blocking` and `_begin`",
    "aio/calls.py:__init__": "(aio) a `_Call` per call: its limits (the first attempt gets "
    "the timeout as given, no clock read), the request hash when there is metadata, about "
    "ten attributes, before any I/O",
    "core/attempt.py:__init__": "the attempt handle: its connection, pod, method, start time "
    "and budget grant",
    "core/attempt.py:release": "the handle's once-only release: a check, then `Balancer.release`",
    "_invoke": "(aio) calls the pod's grpcio multicallable with keyword arguments and "
    "has the attempt watch the call (`AioAttempt.watch`)",
    "watch": "(aio) registers the attempt as the call's done-callback; for a unary call, on "
    "grpcio's Cython call, which makes no `functools.partial`",
    "when_unary_call_ends": "(aio) the Cython call's `add_done_callback`, reached through "
    "grpcio's private attributes",
    "_finish": "(aio) the done-callback's deferred `Attempt.release`",
    "finished_status": "(aio) reads the status through grpcio's private attributes",
    "__call__": "the multicallable entry point",
    "aio/attempts.py:__call__": "(aio) the attempt as its call's done-callback: nothing "
    "when the task awaiting the attempt releases it itself",
    "pick": "the policy's choice itself: the only part that balancing needs",
    "_settle": "(aio) runs the call's own done-callbacks once the outcome is known",
    "__await__": "(aio) the driver (a generator): awaits the attempt, releases it, "
    "settles the call",
    "_started": "(aio) an awaited helper even when the attempt is already running",
    "_attempt_done": "(aio) settles a call nobody drives, or has its retry decided, from "
    "its attempt's done-callback",
    "add_done_callback": "(aio) grpcio wraps each callback in a `functools.partial`",
}


def _name(label: str) -> str:
    return label.split("`")[1] if "`" in label else label


def _why(label: str) -> str:
    """What the function of a profile label ("`name` (path:line)") does, from ``WHY``."""
    name = _name(label)
    path = label.rsplit("(", 1)[-1].rsplit(":", 1)[0] if "(" in label else ""
    return WHY.get(f"{path}:{name}", WHY.get(name, ""))


def describe(
    section: Section,
    missed: list[tuple[str, Target]],
    baselines: dict[str, tuple[float, float, float, float]],
    pure: dict[str, Pure],
    sampled: dict[tuple[str, str], Profile],
) -> None:
    section.intro = (
        "The *pure path* is a real grpclb channel whose per-pod grpcio multicallables are "
        "swapped for no-op fakes after the first call: a call then runs all of grpclb's code "
        "and none of grpcio's (best of several timed loops, so with warm caches: a lower "
        "bound of the real cost). cProfile splits the pure path by function (times under the "
        "profiler are about twice the real ones: read them as shares), and py-spy (`--gil`) "
        "samples a child process making real calls to a pod, which shows the real share."
    )
    own = {flavour: path - base for flavour, (path, base, _, _) in pure.items()}
    section.tables.append(
        Table(
            ("Flavour", "Pure path µs/call", "Bare fake µs/call", "grpclb's own µs/call"),
            [(f, f"{p:.2f}", f"{b:.2f}", f"{own[f]:.2f}") for f, (p, b, _, _) in pure.items()],
        )
    )
    bounds = _bounds(baselines, own)
    if bounds:
        section.tables.append(
            Table(
                (
                    "Scenario: mode",
                    "Baseline call µs",
                    "grpclb, pure path µs",
                    "grpclb, measured added CPU µs",
                    "Reachable (pure path)",
                    "Reachable (measured CPU)",
                    "Measured ratio",
                ),
                [
                    (
                        m,
                        f"{b.base:.0f}",
                        f"{b.pure:.2f}",
                        f"{b.added:+.1f}",
                        f"{b.pure_bound:.3f}",
                        f"{b.added_bound:.3f}",
                        f"{b.measured:.3f}",
                    )
                    for m, b in bounds.items()
                ],
                "*Reachable* is the throughput ratio grpclb could reach if its own cost were the "
                "only difference: baseline / (baseline + grpclb), where *baseline* is the call "
                "through the plain channel (scenario 1) or native round_robin (scenario 2): its "
                "wall time for one thread (latency-bound), its client CPU time otherwise (a "
                "client whose CPU is the bottleneck). The pure path is a lower bound of grpclb's "
                "cost; the added CPU measured in those runs is the real one, noise included: "
                "between grpcio calls the same Python code runs with cold caches.",
            )
        )
    profile_rows = []
    for flavour, (_, _, functions, total) in pure.items():
        for label, us in functions[:10]:
            profile_rows.append(
                (
                    flavour,
                    label,
                    f"{us:.2f}",
                    f"{100 * us / total:.0f} %",
                    _why(label),
                )
            )
    section.tables.append(
        Table(
            (
                "Flavour",
                "Function (own time)",
                "µs/call profiled",
                "Share",
                "What it does per call",
            ),
            profile_rows,
            "cProfile of the pure path: grpclb's functions and the OpenTelemetry calls they make.",
        )
    )
    if sampled:
        _sampled_tables(section, sampled)
    section.notes.append(_limits(missed, bounds, own, pure))


@dataclass(frozen=True)
class Bound:
    base: float  # the plain call's µs: wall for one thread, client CPU otherwise
    pure: float  # grpclb's own µs per call, pure path
    added: float  # grpclb's added client CPU µs per call, scenario 1
    measured: float  # the throughput ratio scenario 1 measured

    @property
    def pure_bound(self) -> float:
        return self.base / (self.base + self.pure)

    @property
    def added_bound(self) -> float:
        return self.base / (self.base + max(self.added, 0.0))


def _bounds(
    baselines: dict[str, tuple[float, float, float, float]], own: dict[str, float]
) -> dict[str, Bound]:
    found = {}
    for key, (wall, cpu, added, measured) in baselines.items():
        mode = key.split(": ", 1)[-1]
        flavour = FLAVOUR_OF_MODE.get(mode)
        if flavour in own:
            base = wall if "1 thread" in mode else cpu
            found[key] = Bound(base, own[flavour], added, measured)
    return found


def _sampled_tables(section: Section, sampled: dict[tuple[str, str], Profile]) -> None:
    modes = sorted({m for m, _ in sampled}, key=["sync", "aio"].index)
    rows = []
    for mode in modes:
        plain, lb = sampled.get((mode, "plain")), sampled.get((mode, "grpclb"))
        for owner in OWNER_ORDER:
            if (plain and plain.samples[owner]) or (lb and lb.samples[owner]):
                rows.append(
                    (
                        mode,
                        owner,
                        f"{100 * plain.share(owner):.1f} %" if plain else "",
                        f"{100 * lb.share(owner):.1f} %" if lb else "",
                    )
                )
    label = {"sync": "sync, 1 thread", "aio": "aio, 100 concurrent"}
    section.tables.append(
        Table(
            ("Mode", "Code", "Plain channel", "grpclb channel"),
            [(label[r[0]], *r[1:]) for r in rows],
            "py-spy `--gil`: share of the samples in which the client held the GIL, by whose code "
            "ran (stdlib frames count for their caller):",
        )
    )
    top = []
    for mode in modes:
        lb = sampled.get((mode, "grpclb"))
        if lb is None:
            continue
        for function, _ in lb.functions.most_common(6):
            top.append((label[mode], f"`{function}`", f"{100 * lb.function_share(function):.1f} %"))
    section.tables.append(
        Table(
            ("Mode", "grpclb function (with callees)", "Share of samples"),
            top,
            "Where the grpclb samples fall:",
        )
    )


def _limits(
    missed: list[tuple[str, Target]],
    bounds: dict[str, Bound],
    own: dict[str, float],
    pure: dict[str, Pure],
) -> str:
    lines = ["**What limits it.**"]
    if not missed:
        lines.append("Every overhead target of this run passed; the tables above show the margin.")
    for scenario, target in missed:
        mode = next((m for m in FLAVOUR_OF_MODE if m in target.name), "")
        line = f"- {target.name}: {target.measured:.3f}"
        if not target.confidence.startswith("n/a"):
            line += f" (95 % interval of the median {target.confidence})"
        line += "."
        bound = bounds.get(f"{scenario}: {mode}")
        if bound is not None:
            line += (
                f" grpclb's own code costs {bound.pure:.1f} µs per call in a hot loop (at best "
                f"{bound.pure_bound:.3f}) and added {bound.added:+.1f} µs of client CPU per call "
                f"in the real runs (at best {bound.added_bound:.3f} for a CPU-bound client)"
            )
            line += (
                ": the target needs a cheaper call path."
                if min(bound.pure_bound, bound.added_bound) < target.limit
                else "; the rest of the gap is this machine's noise."
            )
        lines.append(line)
    for flavour, (_, _, functions, total) in pure.items():
        heavy = [f"`{_name(label)}` {100 * us / total:.0f} %" for label, us in functions[:4]]
        lines.append(
            f"- {flavour}: grpclb's own {own[flavour]:.1f} µs per call (pure path) is mostly "
            f"{', '.join(heavy)} of the profiled time (see *What it does per call*); the py-spy "
            "share above shows the same functions in real calls."
        )
    return "\n".join(lines)
