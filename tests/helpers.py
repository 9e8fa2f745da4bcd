"""Small helpers shared by the integration tests: bounded waits, no bare sleeps."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from collections.abc import Callable, Coroutine, Iterable, Iterator
from concurrent import futures
from typing import Any, TypeVar

import grpc

from grpclb.testing import SERVICE_NAME, PodFleet, echo_pb2, echo_pb2_grpc

T = TypeVar("T")


def wait_until(predicate: Callable[[], T], timeout: float = 10.0, what: str = "") -> T:
    """Poll ``predicate`` until it is truthy, at most ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what or predicate}")
        time.sleep(0.01)


def serve(
    pods: Callable[..., PodFleet],
    dns_server: Any,
    count: int,
    mode: str = "ok",
    delay_ms: int = 0,
    **kwargs: Any,
) -> tuple[PodFleet, str]:
    """``count`` pods (``pods`` fixture, its ``kwargs``) behind the headless name, each set
    to ``mode``; returns the fleet and its ``dns:`` target."""
    fleet = pods(count, **kwargs)
    if mode != "ok" or delay_ms:
        for pod in fleet:
            pod.set_mode(mode, delay_ms)
    dns_server.set_records(SERVICE_NAME, [p.host for p in fleet])
    return fleet, dns_server.target(SERVICE_NAME, fleet.port)


def ready_count(channel: Any) -> int:
    return sum(1 for e in channel.stats().endpoints if e.state == "ready")


def wait_ready(channel: Any, count: int, timeout: float = 10.0) -> None:
    wait_until(lambda: ready_count(channel) == count, timeout, f"{count} ready pods")


def stub(channel: grpc.Channel) -> echo_pb2_grpc.EchoStub:
    return echo_pb2_grpc.EchoStub(channel)


def spread(
    channel: grpc.Channel, calls: int, keys: Iterable[str] | None = None, key: str = "x-user"
) -> Counter[str]:
    """Send ``calls`` unary calls; count replies per serving pod."""
    echo = stub(channel)
    counts: Counter[str] = Counter()
    key_list = list(keys) if keys is not None else None
    for i in range(calls):
        metadata = ((key, key_list[i % len(key_list)]),) if key_list else None
        reply = echo.Unary(echo_pb2.EchoRequest(message=str(i)), timeout=5, metadata=metadata)
        counts[reply.pod] += 1
    return counts


# --- asyncio ------------------------------------------------------------------------------


def drive(coroutine: Coroutine[Any, Any, T], timeout: float = 60.0) -> T:
    """Run one test's coroutine in a fresh event loop, bounded as a whole."""
    return asyncio.run(asyncio.wait_for(coroutine, timeout))


async def ending(awaitable: Any) -> Any:
    """What awaiting gives: the pod that replied, or the exception (never raises)."""
    try:
        return str((await awaitable).pod)
    except BaseException as error:  # CancelledError included: the ending is the finding
        return error


async def until(predicate: Callable[[], T], timeout: float = 10.0, what: str = "") -> T:
    """Poll ``predicate`` on the loop until it is truthy, at most ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what or predicate}")
        await asyncio.sleep(0.01)


async def ready(channel: Any, count: int, timeout: float = 10.0) -> None:
    """Wait until ``count`` pods of an asyncio channel are READY (starting it if need be)."""
    channel.get_state(try_to_connect=True)  # starts resolution without a call
    await until(lambda: ready_count(channel) == count, timeout, f"{count} ready pods")


@contextlib.contextmanager
def generic_servers(
    hosts: Iterable[str], service: str, handlers: dict[str, Any], workers: int = 4
) -> Iterator[str]:
    """One plain grpcio server per loopback host serving ``service``'s ``handlers``
    (grpcio method handlers, by method name); yields their static ``ipv4:`` target."""
    generic = grpc.method_handlers_generic_handler(service, handlers)
    started, addresses = [], []
    try:
        for host in hosts:
            server = grpc.server(
                futures.ThreadPoolExecutor(workers), options=[("grpc.so_reuseport", 0)]
            )
            server.add_generic_rpc_handlers((generic,))
            port = server.add_insecure_port(f"{host}:0")
            server.start()
            started.append(server)
            addresses.append(f"{host}:{port}")
        yield "ipv4:" + ",".join(addresses)
    finally:
        for server in started:
            server.stop(None)


def code_and_seconds(call: Callable[[], Any]) -> tuple[grpc.StatusCode, float]:
    """A sync call's status (OK, or its RpcError's code) and how long it took."""
    started = time.monotonic()
    try:
        call()
        code = grpc.StatusCode.OK
    except grpc.RpcError as error:
        code = error.code()
    return code, time.monotonic() - started
