"""A DNS answer that cannot be applied leaves the previous pods serving (real pods, real DNS).

grpcio refusing to create a pod's channel is injected by wrapping the
channel's ``dial`` (the Transport call that creates it) so it raises for the
new pods, as ``grpc.secure_channel`` raises for call credentials. The old pods
keep serving every call while the bad answer is retried at each refresh, and
the answer applies as soon as dialling works again.
"""

from __future__ import annotations

import asyncio
from typing import Any

import grpc

import grpclb
import grpclb.aio
from grpclb.core.endpoints import Connection
from grpclb.testing import SERVICE_NAME, echo_pb2
from tests.helpers import ready_count, spread, stub, until, wait_ready, wait_until

FAST = {"dns_refresh_interval": "100ms", "dns_min_refresh_interval": "50ms"}


def refusing_dial(channel: Any, refused: set[str]) -> None:
    """Make ``channel.dial`` raise, as grpcio does, for pods whose address is in ``refused``."""
    real = channel.dial

    def dial(connection: Connection) -> Any:
        if connection.endpoint.address in refused:
            raise TypeError("Argument 'channel_credentials' has incorrect type (injected)")
        return real(connection)

    channel.dial = dial


def test_a_failed_answer_keeps_the_previous_pods_serving(pods, dns_server):
    fleet = pods(3)
    dns_server.set_records(SERVICE_NAME, [p.host for p in fleet])
    old = set(fleet.addresses)
    with grpclb.channel(dns_server.target(SERVICE_NAME, fleet.port), **FAST) as channel:
        wait_ready(channel, 3)
        new = fleet.add(2)
        refused = {new[1].address}
        refusing_dial(channel, refused)
        # One old pod leaves, two new ones join; the second new one cannot be dialled.
        dns_server.set_records(SERVICE_NAME, [p.host for p in [*fleet[:2], *new]])
        wait_until(lambda: channel.stats().update_failures >= 2, what="the answer tried twice")
        stats = channel.stats()
        assert {e.address for e in stats.endpoints} == old
        assert {e.state for e in stats.endpoints} == {"ready"}
        counts = spread(channel, 90)  # raises if any call fails
        assert set(counts) == old
        refused.clear()
        wait_until(
            lambda: (
                {e.address for e in channel.stats().endpoints if e.state == "ready"}
                == {*fleet.addresses[:2], *(p.address for p in new)}
            ),
            what="the new answer applied",
        )
        assert set(spread(channel, 60)) == {*fleet.addresses[:2], *(p.address for p in new)}


def test_a_failed_answer_keeps_the_previous_pods_serving_in_asyncio(pods, dns_server):
    fleet = pods(2)
    dns_server.set_records(SERVICE_NAME, [p.host for p in fleet])
    old = set(fleet.addresses)

    async def scenario() -> None:
        async with grpclb.aio.channel(
            dns_server.target(SERVICE_NAME, fleet.port), **FAST
        ) as channel:
            channel.get_state(try_to_connect=True)
            await until(lambda: ready_count(channel) == 2)
            (new,) = await asyncio.to_thread(fleet.add, 1)
            refused = {new.address}
            refusing_dial(channel, refused)
            await asyncio.to_thread(dns_server.set_records, SERVICE_NAME, [p.host for p in fleet])
            await until(lambda: channel.stats().update_failures >= 2)
            assert {e.address for e in channel.stats().endpoints} == old
            echo = stub(channel)
            replies = [(await echo.Unary(echo_pb2.EchoRequest(), timeout=5)).pod for _ in range(40)]
            assert set(replies) == old
            refused.clear()
            await until(lambda: ready_count(channel) == 3)

    asyncio.run(asyncio.wait_for(scenario(), 60))


def test_grpcio_refusing_a_channel_is_reported_at_creation_not_as_no_endpoints(pods):
    """The real mistake from the issue: call credentials given as ``credentials=``."""
    fleet = pods(1)
    call_credentials = grpc.access_token_call_credentials("token")
    try:
        grpclb.channel(fleet.addresses[0], credentials=call_credentials)
    except grpclb.ConfigError as exc:
        assert "keyword credentials=" in str(exc)
    else:
        raise AssertionError("call credentials were accepted as channel credentials")
