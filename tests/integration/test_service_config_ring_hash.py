"""A service config's ring_hash_experimental without requestHashHeader, against real pods.

gRFC A76: without the header (and without xDS) each call gets a random hash, so
calls are spread over the pods, whatever metadata they carry.
"""

from __future__ import annotations

import grpclb
from grpclb.testing import SERVICE_NAME
from tests.helpers import spread, wait_ready

RING_HASH = {"loadBalancingConfig": [{"ring_hash_experimental": {}}]}


def test_ring_hash_without_a_header_spreads_calls_over_the_pods(pods, dns_server):
    fleet = pods(3)
    dns_server.set_records(SERVICE_NAME, [p.host for p in fleet])
    target = dns_server.target(SERVICE_NAME, fleet.port)
    with grpclb.channel(target, service_config=RING_HASH) as channel:
        assert (channel.settings.policy, channel.settings.hash_key) == ("ring_hash", None)
        wait_ready(channel, 3)
        counts = spread(channel, 300, keys=["alice"])  # one key value, yet every pod serves
    assert sorted(counts) == sorted(fleet.addresses)
    assert min(counts.values()) > 50
