"""The proxy comparison's nginx and HAProxy, started as the benchmark starts them.

They come from Debian's packages, which ``scripts/bench.sh`` installs when the
benchmark needs them; without them these tests skip, as nothing else needs them.
"""

from __future__ import annotations

import collections

import grpc
import pytest

from benchmarks.proxies import LISTEN_HOST, Proxies, binary, group_members
from grpclb.testing import echo_pb2, echo_pb2_grpc
from grpclb.testing.pods import pick_port

pytestmark = pytest.mark.skipif(
    binary("nginx") is None or binary("haproxy") is None,
    reason="nginx and haproxy not installed (scripts/bench.sh installs them)",
)


def test_both_proxies_spread_grpc_calls_over_the_pods_and_stop_with_their_workers(pods):
    fleet = pods(2)
    ports = [pick_port([LISTEN_HOST]), 0]
    while ports[1] in (0, ports[0]):
        ports[1] = pick_port([LISTEN_HOST])
    with Proxies(fleet.addresses, ports) as proxies:
        assert [p.name for p in proxies.all] == ["nginx", "haproxy"]
        assert all(v.split()[1][0].isdigit() for v in proxies.versions), proxies.versions
        groups = {}
        for proxy in proxies.all:
            with grpc.insecure_channel(proxy.address) as channel:
                stub = echo_pb2_grpc.EchoStub(channel)
                served = collections.Counter(
                    stub.Unary(echo_pb2.EchoRequest(message="x"), timeout=5).pod for _ in range(20)
                )
            assert set(served) == set(fleet.addresses), (proxy.name, served)
            assert proxy.cpu_seconds() >= 0
            groups[proxy.name] = group_members(proxy.pid)
        assert len(groups["nginx"]) >= 2  # the master and its workers, all in one group
        assert groups["haproxy"] == [proxies.all[1].pid]  # its workers are threads
    for proxy in proxies.all:
        assert group_members(proxy.pid) == [], f"{proxy.name} left processes behind"
