"""The sync flavour learns pod connectivity without a thread per pod channel.

Forty-nine pods are addresses of one in-process grpcio server (127.0.3.x, one
port); the fiftieth is a pod in its own process, so that it can be SIGKILLed.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from concurrent import futures
from typing import Any

import grpc
import pytest

import grpclb
from grpclb import _grpcio
from grpclb.sync.connectivity import MONITOR
from grpclb.testing import ProcessPod, echo_pb2, echo_pb2_grpc
from grpclb.testing._pod_main import EchoServicer, PodState
from grpclb.testing.pods import pick_port
from tests.helpers import stub, wait_ready, wait_until

SHARED = [f"127.0.3.{i}" for i in range(2, 51)]  # 49 pods served by one server
VICTIM = "127.0.4.2"
# Today's figure is 9 or 10 (the main thread, the channel's own thread, the connectivity
# thread, grpc core's threads); one polling thread per pod channel would add 50.
THREAD_BUDGET = 20


def os_threads() -> int:
    """Every thread of this process, grpc core's C threads included."""
    return len(os.listdir("/proc/self/task"))


@pytest.fixture
def shared_pods() -> Iterator[tuple[int, ProcessPod]]:
    """One server on 49 loopback addresses, and a victim pod in its own process."""
    port = pick_port([*SHARED, VICTIM])
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    add_echo: Any = echo_pb2_grpc.add_EchoServicer_to_server  # generated, untyped
    add_echo(EchoServicer(PodState(address="shared")), server)
    for host in SHARED:
        server.add_insecure_port(f"{host}:{port}")
    server.start()
    victim = ProcessPod(VICTIM, port)
    try:
        yield port, victim
    finally:
        victim.stop()
        server.stop(None)


def test_fifty_pods_run_on_a_bounded_number_of_threads_and_a_killed_pod_leaves(
    shared_pods: tuple[int, ProcessPod],
) -> None:
    port, victim = shared_pods
    addresses = [f"{host}:{port}" for host in [*SHARED, VICTIM]]
    before = os_threads()
    with grpclb.channel("ipv4:" + ",".join(addresses), policy="round_robin") as channel:
        wait_ready(channel, 50, timeout=20)
        echo = stub(channel)
        served = {echo.Unary(echo_pb2.EchoRequest(), timeout=5).pod for _ in range(100)}
        assert victim.address in served
        threads = os_threads()
        assert threads - before <= THREAD_BUDGET, (before, threads)
        assert len(MONITOR) >= 50

        victim.kill()
        wait_until(
            lambda: channel.stats().by_address()[victim.address].state != "ready",
            5,
            "the killed pod out of rotation",
        )
        after = [echo.Unary(echo_pb2.EchoRequest(), timeout=5).pod for _ in range(100)]
        assert after == ["shared"] * 100
        assert os_threads() - before <= THREAD_BUDGET
    # Closing unwatches every pod channel: the monitor keeps nothing of this channel.
    wait_until(lambda: len(MONITOR) == 0, 5, "every pod channel unwatched")


def test_connectivity_reader_follows_a_pod_channel_to_ready() -> None:
    """grpclb._grpcio's reader sees a real connection become READY (and asks nothing)."""
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=1))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    channel = grpc.insecure_channel(f"ipv4:127.0.0.1:{port}")
    try:
        read = _grpcio.connectivity_reader(channel)
        assert read is not None
        assert read() is grpc.ChannelConnectivity.IDLE
        assert _grpcio.request_connection(channel)
        deadline = time.monotonic() + 10
        while read() is not grpc.ChannelConnectivity.READY and time.monotonic() < deadline:
            time.sleep(0.01)
        assert read() is grpc.ChannelConnectivity.READY
    finally:
        channel.close()
        server.stop(None)
