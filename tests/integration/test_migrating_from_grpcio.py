"""examples/migrating_from_grpcio.py and the claims docs/migrating-from-grpcio.md makes.

The example runs as a user runs it (its own pods, a static ipv4: target, no DNS); its
halves run here against the test's pods: grpcio's default pick_first pins every call to
one pod, grpclb spreads them; a sync interceptor wrapped around grpclb sees one call per
logical call, retries inside it, and so does an asyncio interceptor given to
grpclb.aio.channel; a server's max_connection_age GOAWAY drains a
connection and grpclb reconnects, no call failing.
"""

from __future__ import annotations

import asyncio
import importlib.util
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path
from types import ModuleType
from typing import Any

import grpc
import grpc.aio
import pytest

import grpclb
import grpclb.aio
from grpclb.testing import echo_pb2, echo_pb2_grpc
from grpclb.testing._pod_main import EchoServicer, PodState

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "migrating_from_grpcio.py"


def load_example() -> ModuleType:
    spec = importlib.util.spec_from_file_location("migrating_from_grpcio", EXAMPLE)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclass looks its module up
    spec.loader.exec_module(module)
    return module


example = load_example()


@pytest.fixture
def fleet(pods):
    return pods(3)


@pytest.fixture
def target(fleet) -> str:
    return "ipv4:" + ",".join(fleet.addresses)


def test_the_example_runs_as_a_user_runs_it() -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, str(EXAMPLE), "--calls", "30"],
        capture_output=True,
        text=True,
        env=env,
        timeout=90,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].startswith("before (grpcio): 30 calls intercepted, 0 failed;")
    assert lines[0].count(":") == 2  # one pod: "127.0.0.2:PORT 30"
    assert lines[1].startswith("after (grpclb) : 30 calls intercepted, 0 failed;")
    assert lines[1].count(" 10") == 3  # three pods, 10 calls each


def test_before_pins_every_call_to_one_pod_and_after_spreads_them(target, fleet) -> None:
    before = example.before(target, calls=30)
    assert (before.failed, before.intercepted, len(before.served)) == (0, 30, 1)
    after, stats = example.after(target, calls=30)
    assert (after.failed, after.intercepted) == (0, 30)
    assert sorted(after.served.values()) == [10, 10, 10]  # round_robin over 3 ready pods
    assert stats.policy == "round_robin"


def test_a_sync_interceptor_sees_one_call_with_the_retries_inside(target, fleet) -> None:
    fleet[0].set_mode("unavailable")
    fleet.reset_stats()
    result, stats = example.after(target, calls=30)
    assert (result.failed, result.intercepted) == (0, 30)
    assert fleet[0].stats().calls > 0  # the failing pod was tried ...
    assert stats.retries == fleet[0].stats().calls  # ... and each failure retried elsewhere
    assert sum(result.served.values()) == 30 and fleet[0].address not in result.served


class CountingAioInterceptor(grpc.aio.UnaryUnaryClientInterceptor):  # type: ignore[misc]
    def __init__(self) -> None:
        self.calls = 0

    async def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        self.calls += 1
        return await continuation(details, request)


def test_an_aio_interceptor_sees_one_call_with_the_retries_inside(target, fleet) -> None:
    fleet[0].set_mode("unavailable")
    interceptor = CountingAioInterceptor()

    async def run() -> int:
        channel = grpclb.aio.channel(
            target,
            interceptors=[interceptor],
            policy="round_robin",
            consecutive_failures=0,  # keep the failing pod in rotation
            success_rate_ejection=False,
        )
        try:
            stub = echo_pb2_grpc.EchoStub(channel)
            for i in range(30):
                await stub.Unary(echo_pb2.EchoRequest(message=str(i)), timeout=5)
            return channel.stats().retries
        finally:
            await channel.close()

    retries = asyncio.run(run())
    assert retries > 0
    assert interceptor.calls == 30  # once per logical call, as grpc.intercept_channel in sync


@pytest.fixture
def aging_servers() -> Iterator[list[PodState]]:
    """Two Echo servers that close every connection after 300 ms (gRPC MAX_CONNECTION_AGE)."""
    options = [
        ("grpc.so_reuseport", 0),
        ("grpc.max_connection_age_ms", 300),
        ("grpc.max_connection_age_grace_ms", 5000),
    ]
    servers, states = [], []
    try:
        for host in ("127.0.0.2", "127.0.0.3"):
            server = grpc.server(futures.ThreadPoolExecutor(max_workers=4), options=options)
            port = server.add_insecure_port(f"{host}:0")
            state = PodState(address=f"{host}:{port}")
            echo_pb2_grpc.add_EchoServicer_to_server(EchoServicer(state), server)  # type: ignore[no-untyped-call]
            server.start()
            servers.append(server)
            states.append(state)
        yield states
    finally:
        for server in servers:
            server.stop(0).wait(5)


def test_server_max_connection_age_drains_and_grpclb_reconnects_without_errors(
    aging_servers: list[PodState],
) -> None:
    target = "ipv4:" + ",".join(state.address for state in aging_servers)
    failures = calls = 0
    deadline = time.monotonic() + 30
    with grpclb.channel(target, policy="round_robin") as channel:
        stub = echo_pb2_grpc.EchoStub(channel)
        # Until each server has seen three connections from us (two GOAWAYs each).
        while min(len(state.peers) for state in aging_servers) < 3:
            assert time.monotonic() < deadline, [sorted(s.peers) for s in aging_servers]
            try:
                stub.Unary(echo_pb2.EchoRequest(message="x"), timeout=5)
            except grpc.RpcError:
                failures += 1
            calls += 1
    assert failures == 0
    assert calls > 0 and all(state.calls > 0 for state in aging_servers)
