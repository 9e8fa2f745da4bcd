"""Request streams under flapping pods: does any call lose, repeat or reorder a message?

Three thread pods flip among ``ok``, ``unavailable`` and
``headers_then_unavailable`` every 30 ms while concurrent callers, sync and
asyncio, make client-streaming and bidirectional calls in every style
(request iterator, ``future()``, a ping-pong that writes its next message only
after the answer, asyncio ``write()``), with retries on and the budget open.
A call may fail (every pod can be failing, and a pod that sent headers commits
the call); a call that succeeds must have every message, once, in order.

    PYTHONPATH=. python scripts/stress_request_streams.py [--calls 40] [--seed 7]

Prints the outcomes per style and exits 1 when a call succeeded with the
wrong messages, raised something other than an RPC error, or left a pod
counted in flight. Loopback only; every call has a 5 s deadline.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sys
import threading
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

import grpc
import grpc.aio

import grpclb
import grpclb.aio
from grpclb.testing import PodFleet, RequestPipe, echo_pb2, echo_pb2_grpc

SETTINGS: dict[str, Any] = {
    "policy": "round_robin",
    "consecutive_failures": 0,  # keep the flapping pods in rotation
    "retries": 4,
    "retry_budget_percent": 100,
    "retry_budget_min_concurrency": 100,
}
MODES = ("ok", "ok", "unavailable", "headers_then_unavailable")


def request(text: str) -> echo_pb2.EchoRequest:
    return echo_pb2.EchoRequest(message=text)


def flap(fleet: PodFleet, stop: threading.Event, rng: random.Random) -> None:
    while not stop.wait(0.03):
        rng.choice(list(fleet)).set_mode(rng.choice(MODES))
    for pod in fleet:
        pod.set_mode("ok")


def sync_call(echo: Any, style: str, texts: list[str]) -> bool:
    if style == "ping-pong":
        pipe, answers = RequestPipe(), []
        replies = echo.BidiStream(pipe, timeout=5)
        for text in texts:
            pipe.add(text)
            answers.append(next(replies).message)
        pipe.close()
        return answers == texts and list(replies) == []
    if style == "bidi":
        replies = echo.BidiStream(iter([request(t) for t in texts]), timeout=5)
        return [r.message for r in replies] == texts
    call = echo.ClientStream.future if style == "future" else echo.ClientStream
    reply = call(iter([request(t) for t in texts]), timeout=5)
    reply = reply.result(timeout=10) if style == "future" else reply
    return bool(reply.message == "".join(texts) and reply.index == len(texts))


async def aio_call(echo: Any, style: str, texts: list[str]) -> bool:
    if style == "ping-pong":
        call, answers = echo.BidiStream(timeout=5), []
        for text in texts:
            await call.write(request(text))
            answers.append((await call.read()).message)
        await call.done_writing()
        return answers == texts and await call.read() is grpc.aio.EOF
    if style == "bidi":

        async def paced() -> AsyncIterator[echo_pb2.EchoRequest]:
            for text in texts:
                await asyncio.sleep(0)
                yield request(text)

        return [r.message async for r in echo.BidiStream(paced(), timeout=5)] == texts
    if style == "write":
        call = echo.ClientStream(timeout=5)
        for text in texts:
            await call.write(request(text))
        await call.done_writing()
        reply = await call
    else:
        reply = await echo.ClientStream(iter([request(t) for t in texts]), timeout=5)
    return bool(reply.message == "".join(texts) and reply.index == len(texts))


def run_sync(target: str, calls: int, seed: int) -> tuple[Counter[tuple[str, str]], int]:
    outcomes: Counter[tuple[str, str]] = Counter()
    lock = threading.Lock()
    with grpclb.channel(target, **SETTINGS) as channel:
        grpc.channel_ready_future(channel).result(timeout=10)
        echo = echo_pb2_grpc.EchoStub(channel)  # type: ignore[no-untyped-call]

        def caller(index: int) -> None:
            rng = random.Random(seed * 100 + index)
            for i in range(calls):
                style = rng.choice(("ping-pong", "bidi", "blocking", "future"))
                texts = [f"{index}.{i}.{k}" for k in range(rng.randint(1, 5))]
                try:
                    got = "ok" if sync_call(echo, style, texts) else "WRONG MESSAGES"
                except grpc.RpcError as error:
                    got = error.code().name
                except Exception as error:  # a bug: reported, and the run fails
                    got = f"RAISED {type(error).__name__}"
                with lock:
                    outcomes["sync " + style, got] += 1

        threads = [threading.Thread(target=caller, args=(t,)) for t in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=120)
        return outcomes, channel.stats().in_flight


async def run_aio(target: str, calls: int, seed: int) -> tuple[Counter[tuple[str, str]], int]:
    outcomes: Counter[tuple[str, str]] = Counter()
    async with grpclb.aio.channel(target, **SETTINGS) as channel:
        await channel.channel_ready()
        echo = echo_pb2_grpc.EchoStub(channel)  # type: ignore[no-untyped-call]

        async def caller(index: int) -> None:
            rng = random.Random(seed * 1000 + index)
            for i in range(calls):
                style = rng.choice(("ping-pong", "bidi", "iterator", "write"))
                texts = [f"{index}.{i}.{k}" for k in range(rng.randint(1, 5))]
                try:
                    ok = await aio_call(echo, style, texts)
                    got = "ok" if ok else "WRONG MESSAGES"
                except grpc.aio.AioRpcError as error:
                    got = error.code().name
                except Exception as error:
                    got = f"RAISED {type(error).__name__}"
                outcomes["aio " + style, got] += 1

        await asyncio.wait_for(asyncio.gather(*(caller(t) for t in range(20))), 120)
        await asyncio.sleep(0.2)  # releases deferred to the loop
        return outcomes, channel.stats().in_flight


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=40, help="calls per caller and flavour")
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    with PodFleet(3) as fleet:
        target = "ipv4:" + ",".join(fleet.addresses)
        stop = threading.Event()
        flapper = threading.Thread(target=flap, args=(fleet, stop, rng))
        flapper.start()
        try:
            sync_outcomes, sync_left = run_sync(target, args.calls, args.seed)
            aio_outcomes, aio_left = asyncio.run(run_aio(target, args.calls, args.seed))
        finally:
            stop.set()
            flapper.join()
    outcomes = sync_outcomes + aio_outcomes
    for (style, got), count in sorted(outcomes.items()):
        print(f"{style:16s} {got:26s} {count}")
    bad = sum(c for (_, got), c in outcomes.items() if got == "WRONG MESSAGES" or "RAISED" in got)
    print(f"wrong or raised: {bad}; left in flight: sync {sync_left}, aio {aio_left}")
    return 1 if bad or sync_left or aio_left else 0


if __name__ == "__main__":
    sys.exit(main())
