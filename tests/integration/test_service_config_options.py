"""A gRPC service config given as a grpcio option, against real pods and a real DNS server."""

from __future__ import annotations

import asyncio
import json

import pytest

import grpclb
import grpclb.aio
from grpclb.errors import ConfigError
from grpclb.testing import SERVICE_NAME
from tests.helpers import spread, wait_ready

ROUND_ROBIN = json.dumps({"loadBalancingConfig": [{"round_robin": {}}]})


def test_service_config_option_balances_and_never_reaches_pod_channels(pods, dns_server):
    fleet = pods(3)
    dns_server.set_records(SERVICE_NAME, [p.host for p in fleet])
    target = dns_server.target(SERVICE_NAME, fleet.port)
    options = [("grpc.service_config", ROUND_ROBIN), ("grpc.enable_retries", 1)]
    with grpclb.channel(target, options=options) as channel:
        assert channel.settings.policy == "round_robin"  # not the default least_request
        assert channel.settings.origin("policy").startswith("service config loadBalancingConfig")
        wait_ready(channel, 3)
        counts = spread(channel, 300)
        pod_options = dict(channel._options)  # what every pod's grpcio channel is given
    assert sorted(counts) == sorted(fleet.addresses)
    assert set(counts.values()) == {100}
    assert "grpc.service_config" not in pod_options
    # The user's own choice is kept: grpcio's transparent retries, inside each pod's channel.
    assert pod_options["grpc.enable_retries"] == 1
    assert pod_options["grpc.enable_channelz"] == 0  # not asked for: grpclb's default


def test_channelz_is_off_in_pod_channels_unless_asked_for():
    with grpclb.channel("ipv4:127.0.0.1:1") as channel:
        assert dict(channel._options)["grpc.enable_channelz"] == 0
    with grpclb.channel("ipv4:127.0.0.1:1", options=[("grpc.enable_channelz", 1)]) as channel:
        assert dict(channel._options)["grpc.enable_channelz"] == 1
        assert [name for name, _ in channel._options].count("grpc.enable_channelz") == 1


def test_aio_channel_lifts_the_option_too():
    async def main() -> None:
        channel = grpclb.aio.channel(
            "ipv4:127.0.0.1:1", options=[("grpc.service_config", ROUND_ROBIN)]
        )
        try:
            assert channel.settings.policy == "round_robin"
            assert "grpc.service_config" not in dict(channel._options)
            # grpclb is the one retry layer: grpcio's is off in pod channels unless asked for.
            assert dict(channel._options)["grpc.enable_retries"] == 0
        finally:
            await asyncio.wait_for(channel.close(), 10)

    asyncio.run(asyncio.wait_for(main(), 20))


def test_option_with_explicit_settings_is_refused():
    with pytest.raises(
        ConfigError, match=r"grpc\.service_config cannot be combined with settings="
    ):
        grpclb.Channel(
            "ipv4:127.0.0.1:1",
            options=[("grpc.service_config", ROUND_ROBIN)],
            settings=grpclb.Settings.load({}, environ={}),
        )
