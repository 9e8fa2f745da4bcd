"""Driving calls: closed-loop load, alternated runs, the process's one event loop."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from functools import partial
from typing import Any, TypeVar

import grpc

from benchmarks.common import CALL_TIMEOUT_S, REQUEST
from grpclb.testing import echo_pb2_grpc

T = TypeVar("T")


def alternated(reps: int, first: Callable[[], T], second: Callable[[], T]) -> list[tuple[T, T]]:
    """``reps`` pairs, run ABBA-style (A B, B A, A B, ...) so slow drift cancels in each ratio."""
    pairs = []
    for rep in range(reps):
        if rep % 2 == 0:
            a = first()
            b = second()
        else:
            b = second()
            a = first()
        pairs.append((a, b))
    return pairs


async def alternated_async(
    reps: int, first: Callable[[], Awaitable[T]], second: Callable[[], Awaitable[T]]
) -> list[tuple[T, T]]:
    """``alternated`` for coroutines."""
    pairs = []
    for rep in range(reps):
        if rep % 2 == 0:
            a = await first()
            b = await second()
        else:
            b = await second()
            a = await first()
        pairs.append((a, b))
    return pairs


def unary(channel: Any) -> Callable[..., Any]:
    """The Echo service's Unary method on ``channel`` (the generated stub is untyped)."""
    stub: Any = echo_pb2_grpc.EchoStub(channel)  # type: ignore[no-untyped-call]
    return stub.Unary  # type: ignore[no-any-return]


def caller(method: Callable[..., Any]) -> Callable[[], Any]:
    """A no-argument call of ``method`` with the benchmark's request and deadline."""
    return partial(method, REQUEST, timeout=CALL_TIMEOUT_S)


# --- load -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Throughput:
    """One timed run of closed-loop unary calls."""

    calls: int
    errors: int
    seconds: float
    cpu_seconds: float  # this process's CPU time, every thread included

    @property
    def rate(self) -> float:
        return self.calls / self.seconds if self.seconds > 0 else 0.0

    @property
    def cpu_us_per_call(self) -> float:
        return self.cpu_seconds / self.calls * 1e6 if self.calls else float("nan")


def sync_load(call: Callable[[], Any], threads: int, seconds: float) -> Throughput:
    """``threads`` threads each calling ``call()`` back to back for ``seconds``."""
    counts = [0] * threads
    errors = [0] * threads
    start = threading.Barrier(threads + 1)
    end_at = [0.0]

    def worker(index: int) -> None:
        start.wait()
        end = end_at[0]
        done = failed = 0
        while time.perf_counter() < end:
            try:
                call()
                done += 1
            except grpc.RpcError:
                failed += 1
        counts[index], errors[index] = done, failed

    pool = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(threads)]
    for thread in pool:
        thread.start()
    cpu0, t0 = time.process_time(), time.perf_counter()
    end_at[0] = t0 + seconds
    start.wait()
    for thread in pool:
        thread.join(timeout=seconds + 30)
    elapsed, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    return Throughput(sum(counts), sum(errors), elapsed, cpu)


async def aio_load(call: Callable[[], Awaitable[Any]], tasks: int, seconds: float) -> Throughput:
    """``tasks`` coroutines each awaiting ``call()`` back to back for ``seconds``."""
    counts = [0] * tasks
    errors = [0] * tasks
    end = time.perf_counter() + seconds

    async def worker(index: int) -> None:
        done = failed = 0
        while time.perf_counter() < end:
            try:
                await call()
                done += 1
            except grpc.RpcError:
                failed += 1
        counts[index], errors[index] = done, failed

    cpu0, t0 = time.process_time(), time.perf_counter()
    await asyncio.wait_for(asyncio.gather(*(worker(i) for i in range(tasks))), seconds + 30)
    elapsed, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    return Throughput(sum(counts), sum(errors), elapsed, cpu)


_loop: asyncio.AbstractEventLoop | None = None


def run_async(work: Coroutine[Any, Any, T]) -> T:
    """Run ``work`` in the one event loop of this process.

    grpc.aio binds its completion-queue poller to the first loop that uses it;
    a second ``asyncio.run`` would leave it posting to a closed loop.
    """
    global _loop
    if _loop is None:
        _loop = asyncio.new_event_loop()
    return _loop.run_until_complete(work)


def close_loop() -> None:
    global _loop
    if _loop is not None:
        _loop.run_until_complete(_loop.shutdown_asyncgens())
        _loop.close()
        _loop = None
