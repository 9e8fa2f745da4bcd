"""A service config's per-method message size limits, enforced as grpcio enforces them.

``maxRequestMessageBytes`` and ``maxResponseMessageBytes`` reach each pod's
grpcio channel (alone: no retries, no balancing), so an oversized message
fails with RESOURCE_EXHAUSTED exactly as on a plain grpcio channel given the
same config, which runs beside grpclb as the reference.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Iterator
from concurrent import futures
from typing import Any

import grpc
import grpc.aio
import pytest

import grpclb
import grpclb.aio

SERVICE = "demo.Sizes"
LIMITED = 16  # bytes


def echo(request: bytes, context: grpc.ServicerContext) -> bytes:
    return request


def grow(request: bytes, context: grpc.ServicerContext) -> bytes:
    return request * 8  # a reply over the limit for a request under it


CONFIG = json.dumps(
    {
        "methodConfig": [
            {"name": [{"service": SERVICE, "method": "Send"}], "maxRequestMessageBytes": LIMITED},
            {"name": [{"service": SERVICE, "method": "Grow"}], "maxResponseMessageBytes": LIMITED},
        ]
    }
)


@pytest.fixture(scope="module")
def target() -> Iterator[str]:
    server = grpc.server(futures.ThreadPoolExecutor(4), options=[("grpc.so_reuseport", 0)])
    handlers = {
        name: grpc.unary_unary_rpc_method_handler(handler)
        for name, handler in (("Send", echo), ("Grow", grow), ("Free", echo))
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
    port = server.add_insecure_port("127.0.0.2:0")
    server.start()
    try:
        yield f"ipv4:127.0.0.2:{port}"
    finally:
        server.stop(None)


def outcomes(channel: Any) -> dict[str, grpc.StatusCode]:
    """Each method's status for a request of 32 bytes, and Grow's for one of 4."""
    found = {}
    for method, size in (("Send", 32), ("Grow", 4), ("Free", 32)):
        call: Callable[..., Any] = channel.unary_unary(f"/{SERVICE}/{method}")
        try:
            call(b"x" * size, timeout=10)
            found[method] = grpc.StatusCode.OK
        except grpc.RpcError as error:
            found[method] = error.code()
    return found


async def aio_outcomes(channel: Any) -> dict[str, grpc.StatusCode]:
    found = {}
    for method, size in (("Send", 32), ("Grow", 4), ("Free", 32)):
        call = channel.unary_unary(f"/{SERVICE}/{method}")
        try:
            await call(b"x" * size, timeout=10)
            found[method] = grpc.StatusCode.OK
        except grpc.aio.AioRpcError as error:
            found[method] = error.code()
    return found


EXPECTED = {
    "Send": grpc.StatusCode.RESOURCE_EXHAUSTED,  # the request is over its method's limit
    "Grow": grpc.StatusCode.RESOURCE_EXHAUSTED,  # the reply is over its method's limit
    "Free": grpc.StatusCode.OK,  # no limit for this method
}


def test_plain_grpcio_enforces_the_limits(target: str) -> None:
    with grpc.insecure_channel(target, options=[("grpc.service_config", CONFIG)]) as channel:
        assert outcomes(channel) == EXPECTED


def test_grpclb_enforces_the_same_limits_in_both_flavours(target: str) -> None:
    with grpclb.channel(target, service_config=CONFIG) as channel:
        assert outcomes(channel) == EXPECTED
        assert channel.stats().in_flight == 0

    async def in_asyncio() -> dict[str, grpc.StatusCode]:
        async with grpclb.aio.channel(target, options=[("grpc.service_config", CONFIG)]) as ch:
            return await aio_outcomes(ch)

    assert asyncio.run(in_asyncio()) == EXPECTED


def test_an_oversized_message_is_not_a_pod_failure_and_is_not_retried(target: str) -> None:
    # RESOURCE_EXHAUSTED is the caller's own message, not the pod's fault: the pod stays in.
    with grpclb.channel(target, service_config=CONFIG, consecutive_failures=1) as channel:
        for _ in range(3):
            assert outcomes(channel)["Send"] == grpc.StatusCode.RESOURCE_EXHAUSTED
        stats = channel.stats()
    assert stats.retries == 0
    assert [(e.failures, e.ejections) for e in stats.endpoints] == [(0, 0)]
