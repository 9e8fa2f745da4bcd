"""grpclb: per-call gRPC load balancing inside the client process, no proxy.

``grpclb.channel("dns:///svc.ns.svc.cluster.local:9000")`` returns a
``grpc.Channel`` that resolves a Kubernetes headless service, keeps one
connection per pod and picks a pod for every call.
"""

from __future__ import annotations

import logging

import grpc
from opentelemetry.metrics import MeterProvider

from grpclb.config.settings import SETTINGS, Settings
from grpclb.config.typed import ChannelSettings, Unpack
from grpclb.errors import ConfigError, LocalRpcError
from grpclb.shell import ChannelOptions, check_channel_arguments, settings_from_options
from grpclb.stats import ChannelStats, EndpointStats
from grpclb.sync.channel import Channel

__all__ = [
    "SETTINGS",
    "Channel",
    "ChannelSettings",
    "ChannelStats",
    "ConfigError",
    "EndpointStats",
    "LocalRpcError",
    "Settings",
    "channel",
]
__version__ = "0.1.0.dev0"

# "it is strongly advised that you do not add any handlers other than NullHandler to your
# library's loggers" - Python's Logging HOWTO; grpcio does the same for "grpc". The
# application decides where grpclb's records go (docs/operations.md, Logging).
logging.getLogger(__name__).addHandler(logging.NullHandler())


def channel(
    target: str,
    *,
    credentials: grpc.ChannelCredentials | None = None,
    options: ChannelOptions = (),
    meter_provider: MeterProvider | None = None,
    env_prefix: str | None = None,
    **settings: Unpack[ChannelSettings],
) -> Channel:
    """A balancing channel to every pod behind ``target``.

    ``settings`` are the keyword forms of the settings in ``grpclb.SETTINGS``, typed
    by ``ChannelSettings`` (each also read from ``GRPCLB_<NAME>``, and first from
    ``<env_prefix>GRPCLB_<NAME>`` when ``env_prefix`` is given); a bad value raises
    ConfigError here, never later. A ``("grpc.service_config", json)`` option is
    read as the ``service_config`` setting and, like ``grpc.lb_policy_name``, is
    not given to the pod channels (docs/service-config.md).
    """
    options = check_channel_arguments(credentials, options)  # grpcio's own verdict, now
    loaded, pod_options = settings_from_options(options, settings, env_prefix=env_prefix)
    return Channel(
        target,
        credentials=credentials,
        options=pod_options,
        meter_provider=meter_provider,
        settings=loaded,
    )
