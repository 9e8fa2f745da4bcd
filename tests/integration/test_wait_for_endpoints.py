"""wait_for_endpoints: sync and asyncio, on static ``ipv4:`` targets (no DNS server)."""

from __future__ import annotations

import asyncio
import time

import grpc
import grpc.aio
import pytest

import grpclb
import grpclb.aio


def run(coroutine, timeout: float = 30.0):
    return asyncio.run(asyncio.wait_for(coroutine, timeout))


def static(*addresses: str) -> str:
    return "ipv4:" + ",".join(addresses)


def ready(stats) -> set[str]:
    return {row.address for row in stats if row.state == "ready"}


def test_every_pod_is_ready_when_it_returns(pods):
    fleet = pods(3)
    with grpclb.channel(static(*fleet.addresses)) as channel:
        stats = channel.wait_for_endpoints(min_ready=None, timeout=10)
        assert ready(stats) == set(fleet.addresses)
        assert ready(channel.stats()) == set(fleet.addresses)


def test_every_pod_waits_for_no_pod_its_health_check_took_out(pods):
    fleet = pods(2)
    fleet[1].set_health("NOT_SERVING")
    with grpclb.channel(static(*fleet.addresses), health_check=True) as channel:
        stats = channel.wait_for_endpoints(min_ready=None, timeout=10)
        states = {row.address: row.state for row in stats}
        assert states == {fleet.addresses[0]: "ready", fleet.addresses[1]: "unhealthy"}


def test_min_ready_returns_once_that_many_are_ready(pods):
    fleet = pods(2)
    with grpclb.channel(static(*fleet.addresses)) as channel:
        stats = channel.wait_for_endpoints(min_ready=1, timeout=10)
        assert len(ready(stats)) >= 1


def test_a_pod_that_never_connects_times_out_naming_it(pods):
    fleet = pods(1)
    missing = f"127.0.0.250:{fleet.port}"  # nothing listens there
    with grpclb.channel(static(fleet.addresses[0], missing)) as channel:
        assert len(ready(channel.wait_for_endpoints(1, timeout=10))) == 1
        started = time.monotonic()
        with pytest.raises(TimeoutError) as raised:
            channel.wait_for_endpoints(min_ready=None, timeout=0.3)
        assert time.monotonic() - started < 5
        assert missing in str(raised.value) and "every pod" in str(raised.value)
        with pytest.raises(TimeoutError, match="2 ready pod"):
            channel.wait_for_endpoints(min_ready=2, timeout=0.1)


@pytest.mark.parametrize("bad", [0, -1, True, 1.5, "2"])
def test_min_ready_must_be_a_positive_count_or_none(bad):
    with (
        grpclb.channel("ipv4:127.0.0.1:1") as channel,
        pytest.raises(ValueError, match="min_ready"),
    ):
        channel.wait_for_endpoints(min_ready=bad, timeout=0.1)


def test_a_closed_channel_raises_at_once():
    channel = grpclb.channel("ipv4:127.0.0.1:1")
    channel.close()
    with pytest.raises(ValueError, match="closed"):
        channel.wait_for_endpoints(timeout=5)


def test_aio_every_pod_is_ready_when_it_returns(pods):
    fleet = pods(3)

    async def main() -> None:
        async with grpclb.aio.channel(static(*fleet.addresses)) as channel:
            stats = await channel.wait_for_endpoints(min_ready=None, timeout=10)
            assert ready(stats) == set(fleet.addresses)
            assert channel.get_state() is grpc.ChannelConnectivity.READY

    run(main())


def test_aio_times_out_naming_the_pod_that_never_connects(pods):
    fleet = pods(1)
    missing = f"127.0.0.250:{fleet.port}"

    async def main() -> None:
        async with grpclb.aio.channel(static(fleet.addresses[0], missing)) as channel:
            await channel.wait_for_endpoints(timeout=10)
            with pytest.raises(TimeoutError) as raised:
                await channel.wait_for_endpoints(min_ready=None, timeout=0.3)
            assert missing in str(raised.value)

    run(main())


def test_aio_closed_channel_and_bad_arguments():
    async def main() -> None:
        channel = grpclb.aio.channel("ipv4:127.0.0.1:1")
        with pytest.raises(ValueError, match="min_ready"):
            await channel.wait_for_endpoints(min_ready=0)
        await channel.close()
        with pytest.raises(grpc.aio.UsageError):
            await channel.wait_for_endpoints(timeout=5)

    run(main())
