"""examples/migrating_from_grpcio.py and the claims docs/migrating-from-grpcio.md makes.

The example runs as a user runs it (its own pods, a static ipv4: target, no DNS); its
halves run here against the test's pods: grpcio's default pick_first pins every call to
one pod, grpclb spreads them; a sync interceptor wrapped around grpclb sees one call per
logical call, retries inside it; an asyncio interceptor given to grpclb.aio.channel runs
on the pod channels and sees every attempt.
"""

from __future__ import annotations

import asyncio
import importlib.util
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import grpc
import grpc.aio
import pytest

import grpclb.aio
from grpclb.testing import echo_pb2, echo_pb2_grpc

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


def test_an_aio_interceptor_runs_on_the_pod_channels_and_sees_every_attempt(target, fleet) -> None:
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
    assert interceptor.calls == 30 + retries
