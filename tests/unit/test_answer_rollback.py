"""A DNS answer is applied whole or not at all: a failure half way keeps the previous pods.

The balancer runs on a fake transport whose ``dial`` can be told to refuse an
address, as grpcio refuses a channel it cannot create, and on a picker factory
that can be told to fail, as a hash table that does not fit in memory does.
"""

from __future__ import annotations

import logging
from typing import Any

import grpc
import pytest

from grpclb.config.settings import Settings
from grpclb.config.target import parse_target
from grpclb.core.balancer import Balancer
from grpclb.core.endpoints import Connection
from grpclb.resolver import Resolution

S = grpc.ChannelConnectivity
A, B, C, D = (f"10.0.0.{i}:9000" for i in range(1, 5))


class Transport:
    """Records the I/O the core asks for; ``refuse`` makes ``dial`` raise for an address."""

    def __init__(self) -> None:
        self.dialled: list[Connection] = []
        self.watched: list[Connection] = []
        self.closed: list[Connection] = []
        self.refuse: set[str] = set()

    def dial(self, connection: Connection) -> object:
        if connection.endpoint.address in self.refuse:
            raise TypeError("Argument 'channel_credentials' has incorrect type")
        self.dialled.append(connection)
        return object()

    def watch(self, connection: Connection) -> None:
        self.watched.append(connection)

    def connect(self, connection: Connection) -> None:
        pass

    def close_connection(self, connection: Connection) -> None:
        self.closed.append(connection)

    def wake(self) -> None:
        pass


def serving(addresses: list[str], **settings: Any) -> tuple[Balancer, Transport]:
    """A balancer whose pods at ``addresses`` are all READY."""
    transport = Transport()
    balancer = Balancer(
        parse_target("dns:///svc.test:9000"),
        Settings.load(settings, environ={}),
        transport,
        clock=lambda: 1000.0,
    )
    balancer.update(Resolution(tuple(addresses)))
    for connection in list(transport.dialled):
        balancer.connectivity_changed(connection, S.READY)
    return balancer, transport


def picked(balancer: Balancer, calls: int = 40) -> set[str]:
    addresses = set()
    for i in range(calls):
        connection = balancer.start_call(i * 0x9E3779B97F4A7C15 % 2**64)
        assert connection is not None
        addresses.add(connection.endpoint.address)
        connection.release(grpc.StatusCode.OK)
    return addresses


def test_a_pod_grpcio_refuses_to_dial_leaves_the_previous_pods_serving() -> None:
    balancer, transport = serving([A, B])
    before = balancer.stats().endpoints
    transport.refuse = {D}
    balancer.update(Resolution((A, C, D)))  # B leaves, C dials, D fails: nothing applies
    stats = balancer.stats()
    assert stats.endpoints == before
    assert [e.state for e in stats.endpoints] == ["ready", "ready"]
    assert stats.update_failures == 1
    assert picked(balancer) == {A, B}
    # C's channel was created before D failed: it is closed, never watched or picked.
    (c_connection,) = [c for c in transport.dialled if c.endpoint.address == C]
    assert transport.closed == [c_connection]
    assert c_connection.closing
    assert c_connection not in transport.watched
    # B was about to drain and close: it is back as it was.
    (b_connection,) = [c for c in transport.dialled if c.endpoint.address == B]
    assert not b_connection.closing and b_connection.draining_since is None
    assert not b_connection.endpoint.removed and b_connection.endpoint.connection is b_connection


def test_the_same_answer_applies_once_the_failure_is_gone() -> None:
    balancer, transport = serving([A, B])
    transport.refuse = {D}
    balancer.update(Resolution((A, C, D)))
    transport.refuse = set()
    balancer.update(Resolution((A, C, D)))
    rows = {e.address: e.state for e in balancer.stats().endpoints}
    assert rows == {A: "ready", C: "idle", D: "idle"}  # B had no call left: closed at once
    assert {c.endpoint.address for c in transport.closed} == {B, C}  # and C's first channel
    assert {c.endpoint.address for c in transport.watched} >= {C, D}
    assert balancer.stats().update_failures == 1


def test_a_first_answer_that_fails_leaves_no_half_set() -> None:
    transport = Transport()
    transport.refuse = {B}
    balancer = Balancer(
        parse_target("dns:///svc.test:9000"), Settings.load({}, environ={}), transport
    )
    balancer.update(Resolution((A, B)))
    assert balancer.stats().endpoints == ()
    assert not balancer.has_endpoints
    assert [c.endpoint.address for c in transport.closed] == [A]


@pytest.mark.parametrize("policy", ["maglev", "ring_hash", "round_robin"])
def test_a_picker_that_cannot_be_built_leaves_the_previous_picker(
    policy: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    balancer, transport = serving([A, B], policy=policy, hash_key="x-user")

    def out_of_memory(*args: object) -> None:
        raise MemoryError

    monkeypatch.setattr(balancer._pickers, "build", out_of_memory)
    balancer.update(Resolution((A, B, C)))
    assert {e.address for e in balancer.stats().endpoints} == {A, B}
    assert picked(balancer) == {A, B}
    assert balancer.stats().update_failures == 1
    assert [c.endpoint.address for c in transport.closed] == [C]


def test_the_failure_is_logged_once_as_an_error_and_its_end_as_info(
    caplog: pytest.LogCaptureFixture,
) -> None:
    balancer, transport = serving([A])
    transport.refuse = {B}
    with caplog.at_level(logging.DEBUG, logger="grpclb"):
        for _ in range(3):
            balancer.update(Resolution((A, B)))
        transport.refuse = set()
        balancer.update(Resolution((A, B)))
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1
    assert "keeping the previous 1 pods" in errors[0].getMessage()
    assert "TypeError" in errors[0].getMessage()
    assert any("apply again" in r.getMessage() for r in caplog.records)
    assert balancer.stats().update_failures == 3
