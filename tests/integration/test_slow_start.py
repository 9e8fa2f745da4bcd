"""Slow start against real pods under load (issue 11): a fifth pod joins four.

With ``slow_start_window=4s`` the new pod starts at a quarter of a full weight
(Envoy's TimeFactor counts at least one second), so in its first second it
gets about 6 % of the calls, under half of a fair 20 %; after the window it
gets its fair share. Counts are the pods' own, read per phase.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest

import grpclb
from grpclb.testing import SERVICE_NAME, PodFleet
from tests.helpers import wait_until
from tests.integration.test_resilience import Load

FleetFactory = Callable[..., PodFleet]
WINDOW = 4.0
FAST_DNS = {"dns_refresh_interval": "100ms", "dns_min_refresh_interval": "50ms"}


def share_of(fleet: PodFleet, address: str, seconds: float) -> tuple[float, dict[str, int]]:
    """The pod's share of the calls served during the next ``seconds``."""
    fleet.reset_stats()
    time.sleep(seconds)  # a measuring window, not a wait for an event
    counts = {pod.address: pod.reset_stats().calls for pod in fleet}
    return counts[address] / max(1, sum(counts.values())), counts


@pytest.mark.parametrize("policy", ["round_robin", "least_request"])
def test_a_fifth_pod_ramps_up_over_the_window(
    pods: FleetFactory, dns_server: Any, policy: str
) -> None:
    fleet = pods(4)
    dns_server.set_records(SERVICE_NAME, [p.host for p in fleet])
    target = dns_server.target(SERVICE_NAME, fleet.port)
    settings = {"policy": policy, "slow_start_window": WINDOW, **FAST_DNS}
    with grpclb.channel(target, **settings) as channel:
        wait_until(lambda: sum(e.state == "ready" for e in channel.stats()) == 4, 10)
        with Load(channel, 4) as load:
            load.wait_for_more(100)
            (new,) = fleet.add(1)
            dns_server.set_records(SERVICE_NAME, [p.host for p in fleet])
            wait_until(
                lambda: (
                    channel.stats().by_address().get(new.address, None) is not None
                    and channel.stats().by_address()[new.address].state == "ready"
                ),
                5,
                "the fifth pod ready",
            )
            joined = time.monotonic()
            weight = channel.stats().by_address()[new.address].weight
            first, first_counts = share_of(fleet, new.address, 1.0)
            time.sleep(max(0.0, joined + WINDOW + 0.2 - time.monotonic()))  # the window ends
            assert channel.stats().by_address()[new.address].weight == 1.0
            settled, settled_counts = share_of(fleet, new.address, 1.5)
        load.stop()
    assert load.errors == []
    assert weight == pytest.approx(0.25, abs=0.02)
    assert first <= 0.10, first_counts  # at most half of a fair 20 %
    assert 0.16 <= settled <= 0.24, settled_counts
