"""grpclb for asyncio: ``grpclb.aio.channel(...)`` returns a ``grpc.aio.Channel``.

The same settings, environment variables, policies, DNS behaviour, recycling,
ejection, retries and stats as ``grpclb.channel``, from the same core.
"""

from __future__ import annotations

from collections.abc import Sequence

import grpc
import grpc.aio
from opentelemetry.metrics import MeterProvider

from grpclb.aio.channel import Channel
from grpclb.config.typed import ChannelSettings, Unpack
from grpclb.shell import ChannelOptions, check_channel_arguments, settings_from_options

__all__ = ["Channel", "channel"]


def channel(
    target: str,
    *,
    credentials: grpc.ChannelCredentials | None = None,
    options: ChannelOptions = (),
    interceptors: Sequence[grpc.aio.ClientInterceptor] | None = None,
    meter_provider: MeterProvider | None = None,
    env_prefix: str | None = None,
    **settings: Unpack[ChannelSettings],
) -> Channel:
    """A balancing asyncio channel to every pod behind ``target``.

    ``settings`` and ``env_prefix`` are those of ``grpclb.channel``. It may be
    created outside a running loop; it starts its background work in the loop
    that first uses it, and belongs to that loop. Options and settings are read
    as ``grpclb.channel`` reads them, ``grpc.service_config`` included.
    """
    options = check_channel_arguments(credentials, options)  # grpcio's own verdict, now
    loaded, pod_options = settings_from_options(options, settings, env_prefix=env_prefix)
    return Channel(
        target,
        credentials=credentials,
        options=pod_options,
        interceptors=interceptors,
        meter_provider=meter_provider,
        settings=loaded,
    )
