"""A big fleet on one machine: hundreds of pod addresses, one server on 0.0.0.0, real DNS.

Subsetting is checked from both ends: what each client channel reports, and
the established connections the kernel lists per pod address on the server.
DNS answers of a thousand records are checked against the real dnsmasq: the
UDP answer is truncated, and the resolver must fetch the whole set over TCP.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Callable

import dns.flags
import dns.message
import dns.query

import grpclb
import grpclb.aio
from grpclb.config.target import parse_target
from grpclb.core.subsetting import rendezvous_subset
from grpclb.resolver import AsyncResolver, Resolver
from grpclb.testing import SERVICE_NAME, DnsServer, echo_pb2, echo_pb2_grpc
from grpclb.testing.crowd import Crowd, first_free_port, loopback_hosts

CLIENTS, PODS, SUBSET = 40, 300, 20
# Ports tried in turn; for each, these 40 seeds over these 300 addresses meet every bound
# below (the ranking hashes "ip:port"), so the outcome does not depend on which is free.
PORTS = range(47301, 47400, 7)
SEEDS = range(1, CLIENTS + 1)


async def wait_until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout} s: {what}")
        await asyncio.sleep(0.02)  # polling stats: no event says "every channel is ready"


def live(channel: grpclb.aio.Channel) -> set[str]:
    return {row.address for row in channel.stats() if row.state != "draining"}


def test_forty_subsetting_clients_over_three_hundred_pods(dns_server: DnsServer) -> None:
    """The issue's numbers: 40 clients, subset_size=20, 300 pods; then one pod replaced.

    asyncio channels: 800 pod connections cost tasks, not grpcio polling threads.
    """
    with Crowd(PODS, port=first_free_port(PORTS)) as crowd:
        dns_server.set_records(SERVICE_NAME, crowd.hosts)
        asyncio.run(_forty_clients(crowd, dns_server))


async def _forty_clients(crowd: Crowd, dns_server: DnsServer) -> None:
    target = dns_server.target(SERVICE_NAME, crowd.port)
    settings = dict(policy="round_robin", subset_size=SUBSET, dns_refresh_interval="500ms")
    channels = [grpclb.aio.channel(target, subset_seed=seed, **settings) for seed in SEEDS]
    try:
        # A first call starts each channel's maintenance task (and its DNS resolution).
        stubs = [echo_pb2_grpc.EchoStub(c) for c in channels]
        await asyncio.gather(*(s.Unary(echo_pb2.EchoRequest(), timeout=10) for s in stubs))
        await wait_until(
            lambda: all(sum(r.state == "ready" for r in c.stats()) == SUBSET for c in channels),
            20,
            "every channel has its 20 pods ready",
        )
        for stub in stubs:
            await asyncio.gather(
                *(stub.Unary(echo_pb2.EchoRequest(), timeout=5) for _ in range(2 * SUBSET))
            )
        subsets = []
        for seed, channel in zip(SEEDS, channels, strict=True):
            stats = channel.stats()
            assert stats.resolved_pods == PODS
            assert len(stats) == SUBSET
            assert sum(row.calls > 0 for row in stats) == SUBSET  # called every pod
            subsets.append(live(channel))
            assert subsets[-1] == rendezvous_subset(crowd.addresses, SUBSET, seed)
        # The server's side: exactly the connections the clients say they hold.
        served = crowd.connections()
        assert served == Counter(a.rsplit(":", 1)[0] for s in subsets for a in s)
        mean = CLIENTS * SUBSET / PODS
        assert max(served.values()) <= 4 * mean
        assert len(served) >= 0.85 * PODS

        # A rolling update's step: one pod held by the first client is replaced.
        index = crowd.hosts.index(sorted(subsets[0])[0].rsplit(":", 1)[0])
        crowd.replace(index)
        dns_server.set_records(SERVICE_NAME, crowd.hosts)
        marks = [c.stats().resolutions for c in channels]
        await wait_until(
            lambda: all(
                c.stats().resolutions >= m + 2 for c, m in zip(channels, marks, strict=True)
            ),
            10,
            "every channel resolved the new answer",
        )
        after = [live(c) for c in channels]
        changes = [len(a ^ b) for a, b in zip(subsets, after, strict=True)]
        assert max(changes) <= 2
        assert sum(1 for n in changes if n) <= 0.25 * CLIENTS
        assert changes[0] == 2  # the client that held the pod got another
    finally:
        await asyncio.gather(*(c.close() for c in channels))


def test_a_thousand_records_arrive_whole_over_tcp_when_udp_truncates(
    dns_server: DnsServer,
) -> None:
    hosts = loopback_hosts(1000, first="127.2.0.1")
    dns_server.set_records(SERVICE_NAME, hosts)
    query = dns.message.make_query(SERVICE_NAME, "A")
    udp = dns.query.udp(query, dns_server.host, port=dns_server.port, timeout=2)
    assert udp.flags & dns.flags.TC  # the datagram holds only part of the answer
    target = parse_target(dns_server.target(SERVICE_NAME, 9000))
    want = tuple(sorted(f"{h}:9000" for h in hosts))
    assert Resolver(target, 2.0).resolve().addresses == want
    assert asyncio.run(AsyncResolver(target, 2.0).resolve()).addresses == want
