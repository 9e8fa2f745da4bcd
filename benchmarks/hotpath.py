"""Hot path: what grpclb's own code costs per call, and where, when an overhead target is missed.

Three views, from cheapest to most realistic:
- the *pure path*: a real grpclb channel whose per-pod grpcio multicallables are
  swapped for no-op fakes, so a call runs all of grpclb and none of grpcio;
- cProfile of that pure path, by function;
- py-spy (``--gil``) sampling of a child process making real calls, by package.
"""

from __future__ import annotations

import cProfile
import pstats
import time
from collections.abc import Callable, Coroutine, Generator
from typing import Any

import grpclb
import grpclb.aio
from benchmarks import sampling
from benchmarks.common import (
    REQUEST,
    Config,
    Section,
    median,
    static_target,
    wait_ready,
    wait_ready_async,
)
from benchmarks.drive import run_async, unary
from grpclb.testing import ProcessPod, echo_pb2
from grpclb.testing.pods import pick_port

NAME = "hotpath"
TITLE = "Hot path: where grpclb's per-call time goes"
HOST = "127.0.0.2"
REPLY = echo_pb2.EchoReply(pod="fake", message="benchmark")
OVERHEAD_SECTIONS = ("overhead", "native")


class _FakeUnary:
    """A sync unary multicallable that answers at once."""

    def __call__(self, *args: Any) -> Any:
        return REPLY

    def with_call(self, *args: Any) -> Any:
        return REPLY, None


class _Status:
    @staticmethod
    def code() -> Any:
        from grpc._cython import cygrpc

        return cygrpc.StatusCode.ok


class _Cython:
    """The Cython call under a grpc.aio call: its status, and callbacks of no arguments."""

    _status = _Status()

    def __init__(self) -> None:
        self.callbacks: list[Callable[[], None]] = []

    def add_done_callback(self, callback: Callable[[], None]) -> None:
        self.callbacks.append(callback)


class _FakeAioCall:
    """A finished grpc.aio unary call: awaiting it runs its done-callbacks and answers."""

    def __init__(self) -> None:
        self._callbacks: list[Callable[[Any], None]] = []
        self._cython_call = _Cython()

    def add_done_callback(self, callback: Callable[[Any], None]) -> None:
        self._callbacks.append(callback)

    def cancelled(self) -> bool:
        return False

    def done(self) -> bool:
        return True

    def __await__(self) -> Generator[Any, None, Any]:
        callbacks, self._callbacks = self._callbacks, []
        for callback in callbacks:
            callback(self)
        ended, self._cython_call.callbacks = self._cython_call.callbacks, []
        for end in ended:
            end()
        return REPLY
        yield  # a generator that never suspends


def _fake_out(channel: Any, fake: Callable[..., Any]) -> None:
    """Swap every cached per-pod multicallable for ``fake`` (grpclb internals, read-only API)."""
    try:
        connections = [e.connection for e in channel._balancer._endpoints.values()]
    except AttributeError as error:
        raise RuntimeError(f"grpclb's internals changed; update hotpath.py: {error}") from error
    for connection in connections:
        for key in list(connection.multicallables):
            connection.multicallables[key] = fake


def _best_us(run: Callable[[int], float], calls: int, rounds: int) -> float:
    return min(run(calls) for _ in range(rounds)) / calls * 1e6


def _profile_rows(profile: cProfile.Profile, calls: int) -> tuple[list[tuple[str, float]], float]:
    """grpclb's functions by own time (µs per call, under the profiler) and their total."""
    raw: Any = pstats.Stats(profile)
    stats: dict[Any, Any] = raw.stats
    rows = []
    for (path, line, name), (_, _, own, _, _) in stats.items():
        if ("grpclb/" in path and "grpclb/testing" not in path) or "opentelemetry/" in path:
            where = path.split("grpclb/", 1)[-1] if "grpclb/" in path else "opentelemetry"
            rows.append((f"`{name}` ({where}:{line})", own / calls * 1e6))
    rows.sort(key=lambda r: -r[1])
    return rows, sum(us for _, us in rows)


def pure_sync(address: str, calls: int, rounds: int) -> tuple[float, float, list[Any], float]:
    """(grpclb path µs, bare fake µs, profile rows, profiled total µs) for blocking unary calls."""
    channel = grpclb.channel(static_target([address]))
    try:
        wait_ready(channel, 1)
        call = unary(channel)
        call(REQUEST, timeout=5)  # creates the per-pod multicallable
        fake = _FakeUnary()
        _fake_out(channel, fake)

        def through(n: int) -> float:
            t0 = time.perf_counter()
            for _ in range(n):
                call(REQUEST, timeout=5)
            return time.perf_counter() - t0

        def bare(n: int) -> float:
            t0 = time.perf_counter()
            for _ in range(n):
                fake(REQUEST, 5, None, None, None, None)
            return time.perf_counter() - t0

        path, base = _best_us(through, calls, rounds), _best_us(bare, calls, rounds)
        profile = cProfile.Profile()
        profile.runcall(through, calls)
        rows, total = _profile_rows(profile, calls)
        return path, base, rows, total
    finally:
        channel.close()


async def _pure_aio(address: str, calls: int, rounds: int) -> tuple[float, float, list[Any], float]:
    channel = grpclb.aio.channel(static_target([address]))
    try:
        await wait_ready_async(channel, 1)
        call = unary(channel)
        await call(REQUEST, timeout=5)
        _fake_out(channel, lambda *a, **k: _FakeAioCall())

        async def through(n: int) -> float:
            t0 = time.perf_counter()
            for _ in range(n):
                await call(REQUEST, timeout=5)
            return time.perf_counter() - t0

        async def bare(n: int) -> float:
            t0 = time.perf_counter()
            for _ in range(n):
                await _FakeAioCall()
            return time.perf_counter() - t0

        path = min([await through(calls) for _ in range(rounds)]) / calls * 1e6
        base = min([await bare(calls) for _ in range(rounds)]) / calls * 1e6
        profile = cProfile.Profile()
        profile.enable()
        await through(calls)
        profile.disable()
        rows, total = _profile_rows(profile, calls)
        return path, base, rows, total
    finally:
        await channel.close()


def pure_aio(address: str, calls: int, rounds: int) -> tuple[float, float, list[Any], float]:
    work: Coroutine[Any, Any, Any] = _pure_aio(address, calls, rounds)
    return run_async(work)  # type: ignore[no-any-return]


def _baseline_costs(sections: list[Section]) -> dict[str, tuple[float, float, float, float]]:
    """Per "scenario: mode" of the overhead scenarios: the baseline's wall µs and client CPU
    µs per call, grpclb's added client CPU µs per call, the throughput ratio (medians)."""
    found: dict[str, tuple[float, float, float, float]] = {}
    for section in sections:
        if section.name in OVERHEAD_SECTIONS:
            for mode, pairs in section.extra.get("results", {}).items():
                found[f"{section.name}: {mode}"] = (
                    median([1e6 / a.rate for a, _ in pairs]),
                    median([a.cpu_us_per_call for a, _ in pairs]),
                    median([b.cpu_us_per_call - a.cpu_us_per_call for a, b in pairs]),
                    median([b.rate / a.rate for a, b in pairs]),
                )
    return found


def run(cfg: Config, sections: list[Section]) -> Section:
    calls, rounds, seconds = cfg.pick(20_000, 3_000), cfg.pick(5, 2), cfg.pick(4.0, 1.5)
    missed = [
        (s.name, t)
        for s in sections
        if s.name in OVERHEAD_SECTIONS
        for t in s.targets
        if not t.passed
    ]
    baselines = _baseline_costs(sections)
    section = Section(NAME, TITLE)
    with ProcessPod(HOST, pick_port([HOST])) as pod:
        pure = {"sync": pure_sync(pod.address, calls, rounds)}
        pure["aio"] = pure_aio(pod.address, calls, rounds)
        sampled: dict[tuple[str, str], sampling.Profile] = {}
        try:
            for mode in ("sync", "aio"):
                for kind in ("plain", "grpclb"):
                    sampled[(mode, kind)] = sampling.sample(mode, kind, pod.address, seconds)
        except (RuntimeError, OSError) as error:
            section.notes.append(f"py-spy sampling skipped: {error}")
    from benchmarks.hotpath_report import describe

    describe(section, missed, baselines, pure, sampled)
    return section
