"""Names from the hosts file: ``localhost`` and Kubernetes hostAliases, sync and asyncio.

The pod listens on 127.0.0.1 only. With ``::1`` listed next to 127.0.0.1 for
``localhost`` (Debian's default hosts file), the IPv6 address refuses every
connection; calls made from the very first instant, with retries off, must
still all succeed: they wait for the address that answers.
"""

from __future__ import annotations

import asyncio
import os
from concurrent import futures
from pathlib import Path

import grpc
import pytest

import grpclb
import grpclb.aio
from grpclb.testing import echo_pb2
from grpclb.testing.pods import port_is_free
from tests.helpers import stub, wait_until

NO_RETRIES = {"retries": 0}
BOTH = "::1 localhost ip6-localhost\n127.0.0.1 localhost\n"
BOTH_V6_LAST = "127.0.0.1 localhost\n::1 localhost\n"


@pytest.fixture
def loopback_pod(pods):
    """One pod on 127.0.0.1 only; nothing listens on [::1] at its port."""
    fleet = pods(1, first_host=1)
    assert fleet[0].host == "127.0.0.1"
    assert port_is_free("::1", fleet.port), "something listens on [::1] at the pod's port"
    return fleet[0]


def hosts_file(tmp_path: Path, text: str) -> str:
    path = tmp_path / "hosts"
    path.write_text(text)
    return str(path)


def calls_from_the_start(channel: grpc.Channel, count: int = 40) -> list[str]:
    """``count`` calls on 4 threads, the first ones before any connection is up."""
    echo = stub(channel)
    with futures.ThreadPoolExecutor(4) as pool:
        return list(
            pool.map(lambda i: echo.Unary(echo_pb2.EchoRequest(), timeout=5).pod, range(count))
        )


def test_localhost_from_the_system_hosts_file(loopback_pod):
    with grpclb.channel(f"localhost:{loopback_pod.port}", **NO_RETRIES) as channel:
        assert set(calls_from_the_start(channel)) == {loopback_pod.address}


@pytest.mark.parametrize("text", [BOTH, BOTH_V6_LAST], ids=["v6 first", "v6 last"])
def test_localhost_with_a_refusing_ipv6_address_fails_no_call(loopback_pod, tmp_path, text):
    path = hosts_file(tmp_path, text)
    for _ in range(3):  # each channel races its two first connections anew
        with grpclb.channel(
            f"localhost:{loopback_pod.port}", hosts_file=path, **NO_RETRIES
        ) as channel:
            assert set(calls_from_the_start(channel)) == {loopback_pod.address}
            rows = {e.address: e.state for e in channel.stats().endpoints}
            assert rows[loopback_pod.address] == "ready"
            assert rows[f"[::1]:{loopback_pod.port}"] != "ready"


def test_localhost_in_asyncio(loopback_pod, tmp_path):
    path = hosts_file(tmp_path, BOTH)

    async def scenario() -> set[str]:
        served: set[str] = set()
        for hosts in (None, path):  # the system's file, then one with ::1 as well
            settings = {"hosts_file": hosts} if hosts else {}
            async with grpclb.aio.channel(
                f"localhost:{loopback_pod.port}", **settings, **NO_RETRIES
            ) as channel:
                echo = stub(channel)
                replies = await asyncio.gather(
                    *(echo.Unary(echo_pb2.EchoRequest(), timeout=5) for _ in range(40))
                )
                served |= {r.pod for r in replies}
        return served

    assert asyncio.run(asyncio.wait_for(scenario(), 60)) == {loopback_pod.address}


def test_a_host_alias_is_resolved_and_followed_when_the_file_changes(pods, tmp_path):
    fleet = pods(2, first_host=3)
    path = hosts_file(tmp_path, f"# Entries added by HostAliases.\n{fleet[0].host}\tapi.alias\n")
    settings = {"dns_refresh_interval": "100ms", "dns_min_refresh_interval": "50ms"}
    with grpclb.channel(f"api.alias:{fleet.port}", hosts_file=path, **settings) as channel:
        assert set(calls_from_the_start(channel, 8)) == {fleet[0].address}
        replacement = tmp_path / "hosts.new"
        replacement.write_text(f"{fleet[1].host}\tapi.alias\n")
        os.replace(replacement, path)  # as the kubelet rewrites it
        wait_until(
            lambda: [e.address for e in channel.stats().endpoints] == [fleet[1].address],
            what="the alias followed to the second pod",
        )
        assert set(calls_from_the_start(channel, 8)) == {fleet[1].address}
