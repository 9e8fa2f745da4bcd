"""Fixtures shared by every test: real pods, a real DNS server, a throwaway CA.

Nothing here skips: a missing dnsmasq fails the tests that need it, with the
setup step that installs it, so a green run always means the DNS tests ran.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from grpclb.testing import DnsServer, PodFleet, TestPki

FleetFactory = Callable[..., PodFleet]


@pytest.fixture
def dns_server() -> Iterator[DnsServer]:
    """A running dnsmasq on 127.0.0.1 with no records; stopped after the test."""
    server = DnsServer()
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def pods() -> Iterator[FleetFactory]:
    """``pods(count, processes=..., tls=...)`` makes a PodFleet stopped after the test."""
    fleets: list[PodFleet] = []

    def make(
        count: int = 0,
        *,
        port: int | None = None,
        processes: bool = False,
        first_host: int = 2,
        tls: tuple[bytes, bytes] | None = None,
    ) -> PodFleet:
        fleet = PodFleet(count, port=port, processes=processes, first_host=first_host, tls=tls)
        fleets.append(fleet)
        return fleet

    try:
        yield make
    finally:
        for fleet in fleets:
            fleet.stop_all()


@pytest.fixture(scope="session")
def pki() -> TestPki:
    """One CA for the session: certificates are cheap, but a CA per test buys nothing."""
    return TestPki()
