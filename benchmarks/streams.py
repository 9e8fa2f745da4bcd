"""Scenario: what keeping a request stream for retries costs per message.

With retries on (the default), grpclb keeps a client-streaming call's messages
(up to ``retry_buffer_bytes``) and sends them itself, so a retry on another pod
can send them again. One pod in its own process; client-streaming calls of 100
small messages, back to back, through a plain grpcio channel and through
grpclb with its default settings. Reported per message: this process's CPU
time, and the throughput ratio.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import grpc
import grpc.aio

import grpclb
import grpclb.aio
from benchmarks.common import (
    Config,
    Section,
    Table,
    med_spread,
    median,
    static_target,
    wait_ready,
    wait_ready_async,
)
from benchmarks.drive import Throughput, alternated, alternated_async, run_async
from grpclb.testing import ProcessPod, echo_pb2, echo_pb2_grpc
from grpclb.testing.pods import pick_port

NAME = "streams"
TITLE = "Request streams kept for retries: cost per message, one pod"
HOST = "127.0.0.2"
MESSAGES = 100  # per call
Pairs = list[tuple[Throughput, Throughput]]
REQUEST = echo_pb2.EchoRequest(message="x" * 32)


def _requests() -> Iterator[echo_pb2.EchoRequest]:
    for _ in range(MESSAGES):
        yield REQUEST


async def _async_requests() -> AsyncIterator[echo_pb2.EchoRequest]:
    for _ in range(MESSAGES):
        yield REQUEST


def _timed(calls: Callable[[], int], seconds: float) -> Throughput:
    """Back-to-back calls for ``seconds``; a Throughput counted in messages."""
    end = time.perf_counter() + seconds
    cpu0, t0, sent = time.process_time(), time.perf_counter(), 0
    while time.perf_counter() < end:
        sent += calls()
    return Throughput(sent, 0, time.perf_counter() - t0, time.process_time() - cpu0)


async def _timed_async(calls: Callable[[], Awaitable[int]], seconds: float) -> Throughput:
    end = time.perf_counter() + seconds
    cpu0, t0, sent = time.process_time(), time.perf_counter(), 0
    while time.perf_counter() < end:
        sent += await calls()
    return Throughput(sent, 0, time.perf_counter() - t0, time.process_time() - cpu0)


def _sync_pairs(address: str, reps: int, seconds: float) -> Pairs:
    plain = grpc.insecure_channel(address)
    balanced = grpclb.channel(static_target([address]))
    try:
        wait_ready(balanced, 1)
        stubs = [echo_pb2_grpc.EchoStub(c) for c in (plain, balanced)]  # type: ignore[no-untyped-call]

        def one(stub: Any) -> Callable[[], int]:
            def call() -> int:
                assert stub.ClientStream(_requests(), timeout=10).index == MESSAGES
                return MESSAGES

            return call

        calls = [one(s) for s in stubs]
        for call in calls:
            _timed(call, 0.3)
        return alternated(
            reps, lambda: _timed(calls[0], seconds), lambda: _timed(calls[1], seconds)
        )
    finally:
        balanced.close()
        plain.close()


async def _aio_pairs(address: str, style: str, reps: int, seconds: float) -> Pairs:
    plain = grpc.aio.insecure_channel(address)
    balanced = grpclb.aio.channel(static_target([address]))
    try:
        await asyncio.wait_for(plain.channel_ready(), 20)
        await wait_ready_async(balanced, 1)
        stubs = [echo_pb2_grpc.EchoStub(c) for c in (plain, balanced)]  # type: ignore[no-untyped-call]

        def one(stub: Any) -> Callable[[], Awaitable[int]]:
            async def by_iterator() -> int:
                reply = await stub.ClientStream(_async_requests(), timeout=10)
                assert reply.index == MESSAGES
                return MESSAGES

            async def by_writes() -> int:
                call = stub.ClientStream(timeout=10)
                for _ in range(MESSAGES):
                    await call.write(REQUEST)
                await call.done_writing()
                assert (await call).index == MESSAGES
                return MESSAGES

            return by_iterator if style == "iterator" else by_writes

        calls = [one(s) for s in stubs]
        for call in calls:
            await _timed_async(call, 0.3)
        return await alternated_async(
            reps,
            lambda: _timed_async(calls[0], seconds),
            lambda: _timed_async(calls[1], seconds),
        )
    finally:
        await balanced.close()
        await plain.close()


def run(cfg: Config) -> Section:
    reps, seconds = cfg.pick(12, 2), cfg.pick(0.5, 0.3)
    with ProcessPod(HOST, pick_port([HOST])) as pod:
        results = {
            "sync, request iterator": _sync_pairs(pod.address, reps, seconds),
            "aio, async iterator": run_async(_aio_pairs(pod.address, "iterator", reps, seconds)),
            "aio, write()": run_async(_aio_pairs(pod.address, "writes", reps, seconds)),
        }
    section = Section(NAME, TITLE)
    section.intro = (
        f"Client-streaming calls of {MESSAGES} messages, one after another, to one pod "
        "process, through a plain grpcio channel and through grpclb with default settings "
        "(retries on: each call's messages are kept, up to `retry_buffer_bytes`, and sent by "
        "grpclb). Runs alternate; each ratio is grpclb over the plain run next to it. No "
        "target: the table says what the retry buffer costs."
    )
    rows = []
    for style, pairs in results.items():
        rows.append(
            (
                style,
                med_spread([b.rate / a.rate for a, b in pairs]),
                f"{median([a.cpu_us_per_call for a, _ in pairs]):.1f} / "
                f"{median([b.cpu_us_per_call for _, b in pairs]):.1f}",
                med_spread([b.cpu_us_per_call - a.cpu_us_per_call for a, b in pairs], "{:+.1f}"),
            )
        )
    section.tables.append(
        Table(
            (
                "Style",
                "Messages/s grpclb / plain",
                "Client CPU µs/message plain / grpclb",
                "Added CPU µs per message",
            ),
            rows,
        )
    )
    section.extra["results"] = results
    return section
