"""Active health checking (gRFC A17) against real pods under load (issue 11).

Four thread pods behind the real DNS server, one of them without a
grpc.health.v1 service; the others' status is switched at run time and their
Watch streams see it at once. Counts are the pods' own (Echo calls only;
health streams are not counted), read per phase with ``reset_stats``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import grpclb
import grpclb.aio
from grpclb.testing import SERVICE_NAME, PodFleet, ThreadPod, echo_pb2
from tests.helpers import stub, wait_ready, wait_until
from tests.integration.test_resilience import Load

FleetFactory = Callable[..., PodFleet]
SETTLED = {"serving", "unimplemented"}


def four_pods(pods: FleetFactory, dns_server: Any) -> tuple[PodFleet, str]:
    """Three pods with a health service, a fourth without; returns the fleet and target."""
    fleet = pods(3)
    fleet.add(1, health_service=False)
    dns_server.set_records(SERVICE_NAME, [p.host for p in fleet])
    return fleet, dns_server.target(SERVICE_NAME, fleet.port)


def health_of(channel: Any) -> dict[str, str]:
    return {e.address: e.health for e in channel.stats().endpoints}


def answered(channel: Any) -> bool:
    """Every pod has answered its health Watch (or has no health service)."""
    found = health_of(channel)
    return len(found) == 4 and set(found.values()) <= SETTLED


def calls_in(fleet: PodFleet, seconds: float) -> dict[str, int]:
    """Calls each pod served during the next ``seconds``."""
    fleet.reset_stats()
    time.sleep(seconds)  # a measuring window, not a wait for an event
    return {pod.address: pod.reset_stats().calls for pod in fleet}


def test_not_serving_leaves_rotation_without_failing_a_call_and_serving_returns_it(
    pods: FleetFactory, dns_server: Any
) -> None:
    fleet, target = four_pods(pods, dns_server)
    flipped, bare = fleet[0], fleet[3]
    assert isinstance(flipped, ThreadPod)
    with grpclb.channel(target, health_check=True, policy="round_robin") as channel:
        wait_until(lambda: answered(channel), 10, "4 pods answering")
        assert health_of(channel)[bare.address] == "unimplemented"
        with Load(channel, 4) as load:
            load.wait_for_more(200)
            before = calls_in(fleet, 0.5)
            flipped.set_health("NOT_SERVING")
            time.sleep(1.0)  # the allowance: from 1 s after the change, no call
            out = calls_in(fleet, 1.0)
            assert health_of(channel)[flipped.address] == "not_serving"
            flipped.reset_stats()
            flipped.set_health("SERVING")
            back_at = time.monotonic()
            wait_until(lambda: flipped.stats().calls > 0, 1.0, "calls on the pod again")
            returned_after = time.monotonic() - back_at
            after = calls_in(fleet, 0.5)
        load.stop()
    assert load.errors == []
    assert out[flipped.address] == 0, out
    assert returned_after < 1.0
    total_out = sum(out.values())
    assert out[bare.address] >= total_out / 3 * 0.8, out  # a third while three serve
    for phase in (before, after):
        assert phase[bare.address] >= sum(phase.values()) / 4 * 0.8, phase
        assert phase[flipped.address] >= sum(phase.values()) / 4 * 0.8, phase


def test_service_unknown_for_the_configured_service_name_leaves_rotation(
    pods: FleetFactory, dns_server: Any
) -> None:
    fleet, target = four_pods(pods, dns_server)
    pod = fleet[1]
    assert isinstance(pod, ThreadPod)
    settings = {"health_check": True, "health_check_service_name": "grpclb.testing.Echo"}
    with grpclb.channel(target, policy="round_robin", **settings) as channel:
        wait_until(lambda: answered(channel), 10, "every pod's first health answer")
        wait_ready(channel, 4)
        assert health_of(channel)[pod.address] == "serving"
        pod.set_health("SERVICE_UNKNOWN", "grpclb.testing.Echo")
        wait_until(lambda: health_of(channel)[pod.address] == "service_unknown", 1.0)
        assert channel.stats().by_address()[pod.address].state == "unhealthy"
        echo = stub(channel)
        served = {echo.Unary(echo_pb2.EchoRequest(), timeout=5).pod for _ in range(30)}
    assert pod.address not in served and len(served) == 3


def test_without_health_checking_a_not_serving_pod_keeps_its_share(
    pods: FleetFactory, dns_server: Any
) -> None:
    fleet, target = four_pods(pods, dns_server)
    flipped = fleet[0]
    assert isinstance(flipped, ThreadPod)
    flipped.set_health("NOT_SERVING")
    with grpclb.channel(target, policy="round_robin") as channel:
        wait_until(lambda: sum(e.state == "ready" for e in channel.stats()) == 4, 10)
        with Load(channel, 4) as load:
            load.wait_for_more(100)
            counts = calls_in(fleet, 1.0)
        load.stop()
        assert set(health_of(channel).values()) == {"disabled"}
    assert load.errors == []
    assert counts[flipped.address] >= sum(counts.values()) / 4 * 0.8, counts


def test_asyncio_channel_follows_the_health_status(pods: FleetFactory, dns_server: Any) -> None:
    fleet, target = four_pods(pods, dns_server)
    flipped, bare = fleet[0], fleet[3]
    assert isinstance(flipped, ThreadPod)

    async def main() -> tuple[set[str], set[str], set[str]]:
        async with grpclb.aio.channel(target, health_check=True, policy="round_robin") as ch:
            echo = stub(ch)

            async def served(n: int) -> set[str]:
                replies = [await echo.Unary(echo_pb2.EchoRequest(), timeout=5) for _ in range(n)]
                return {r.pod for r in replies}

            await served(4)  # starts the channel
            for _ in range(500):  # bounded: 5 s
                if answered(ch):
                    break
                await asyncio.sleep(0.01)
            first = await served(40)
            flipped.set_health("NOT_SERVING")
            for _ in range(100):
                if health_of(ch)[flipped.address] == "not_serving":
                    break
                await asyncio.sleep(0.01)
            during = await served(40)
            flipped.set_health("SERVING")
            for _ in range(100):
                if health_of(ch)[flipped.address] == "serving":
                    break
                await asyncio.sleep(0.01)
            return first, during, await served(40)

    first, during, after = asyncio.run(main())
    assert first == after == set(fleet.addresses)
    assert during == set(fleet.addresses) - {flipped.address}
    assert bare.address in during


def test_inspect_shows_each_pods_health(pods: FleetFactory, dns_server: Any, capsys: Any) -> None:
    from grpclb.tools import cli

    fleet, target = four_pods(pods, dns_server)
    flipped = fleet[0]
    assert isinstance(flipped, ThreadPod)
    flipped.set_health("NOT_SERVING")
    assert cli.main(["inspect", target, "--set", "health_check=true"]) == 0
    lines = capsys.readouterr().out.splitlines()
    health = {line.split()[0]: line.split()[-1] for line in lines if line[:1].isdigit()}
    assert "HEALTH" in next(line for line in lines if line.startswith("ADDRESS"))
    assert health == {
        flipped.address: "not_serving",
        fleet[1].address: "serving",
        fleet[2].address: "serving",
        fleet[3].address: "unimplemented",
    }
