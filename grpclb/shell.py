"""What the sync and asyncio channels share around the balancer core.

Both are thin shells: they parse the target and settings the same way, give
every pod channel the same options, own one ``Balancer`` with its telemetry,
and answer ``stats()`` and ``repr()`` the same way. Only their I/O (threads or
tasks, grpcio or grpc.aio channels) and call paths differ.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from types import ModuleType
from typing import Any

import grpc
from opentelemetry.metrics import MeterProvider

from grpclb.config.settings import Settings
from grpclb.config.target import Target, parse_target
from grpclb.core.balancer import Balancer, Clock
from grpclb.errors import ConfigError
from grpclb.stats import ChannelStats
from grpclb.telemetry import telemetry_for

ChannelOptions = Sequence[tuple[str, Any]]


def pod_channel_options(
    target: Target, options: ChannelOptions, secure: bool
) -> list[tuple[str, Any]]:
    """Options for one pod's channel: its own TCP connection, the service's name.

    The call authority and the TLS name stay the service's, so a certificate
    for the service verifies while we dial a pod's IP; verification is never
    switched off.
    """
    merged = list(options)
    names = {name for name, _ in merged}
    merged.append(("grpc.use_local_subchannel_pool", 1))
    if not target.is_static and "grpc.default_authority" not in names:
        merged.append(("grpc.default_authority", target.authority))
    if secure and not target.is_static and "grpc.ssl_target_name_override" not in names:
        merged.append(("grpc.ssl_target_name_override", target.host))
    return merged


# Where the throwaway channel of check_channel_arguments "points": it never connects.
_NOWHERE = "ipv4:127.0.0.1:1"


def check_channel_arguments(
    credentials: grpc.ChannelCredentials | None, options: ChannelOptions | None
) -> tuple[tuple[str, Any], ...]:
    """The options as a tuple, once grpcio has accepted them with these credentials.

    Pod channels are created later, when DNS answers; a mistake grpcio reports
    when a channel is created (call credentials given as ``credentials``, an
    option value that is not an int, str or bytes) must surface here, at once,
    not as a background error and no pod. So grpcio itself judges: one channel
    is created with the same arguments, to an address it never connects to,
    and closed.
    """
    try:
        as_given = tuple(options or ())
    except TypeError as exc:
        raise _refused("options", options, exc, _OPTIONS_HINT) from exc
    checks = [("options", as_given, as_given, _OPTIONS_HINT)]
    if credentials is not None:  # first alone, so the error names the right keyword
        checks.insert(0, ("credentials", credentials, (), _CREDENTIALS_HINT))
    for name, value, given, hint in checks:
        try:
            if credentials is None:
                grpc.insecure_channel(_NOWHERE, options=given).close()
            else:
                grpc.secure_channel(_NOWHERE, credentials, options=given).close()
        except Exception as exc:
            raise _refused(name, value, exc, hint) from exc
    return as_given


_CREDENTIALS_HINT = (
    "a grpc.ChannelCredentials, such as grpc.ssl_channel_credentials(); call credentials "
    "go inside one, with grpc.composite_channel_credentials(channel, call)"
)
_OPTIONS_HINT = "a sequence of (name, value) pairs, each name a str and each value an int or str"


def _refused(name: str, value: object, exc: Exception, hint: str) -> ConfigError:
    shown = repr(value) if len(repr(value)) <= 200 else repr(value)[:200] + "..."
    return ConfigError(
        f"keyword {name}={shown} is invalid: grpcio refuses it "
        f"({type(exc).__name__}: {exc}); expected {hint}"
    )


def dial_address(address: str) -> str:
    """A grpcio target for one pod that grpcio will not resolve again."""
    return f"ipv6:{address}" if address.startswith("[") else f"ipv4:{address}"


class ChannelShell:
    """The parts of a balancing channel that do not depend on its flavour."""

    _label = "grpclb"
    _calls: ModuleType  # the flavour's call path: grpclb.calls or grpclb.aio.calls
    _target: Target
    _settings: Settings
    _balancer: Balancer

    def _set_up(
        self,
        target: str,
        credentials: grpc.ChannelCredentials | None,
        options: ChannelOptions | None,
        settings: Settings | None,
        meter_provider: MeterProvider | None,
        clock: Clock,
        rng: random.Random | None,
    ) -> None:
        self._target = parse_target(target)
        self._settings = settings or Settings.load()
        options = check_channel_arguments(credentials, options)
        self._credentials = credentials
        self._options = pod_channel_options(self._target, options, credentials is not None)
        self._clock = clock
        self._hash_key = self._settings.hash_key
        # The flavour is the balancer's transport: it does the I/O the core asks for.
        self._balancer = Balancer(self._target, self._settings, self, clock=clock, rng=rng)  # type: ignore[arg-type]
        self._balancer.telemetry = telemetry_for(
            self._target.text,
            meter_provider,
            self._settings.metrics_endpoint_limit,
            self._balancer.observe,
        )

    # grpc.Channel's and grpc.aio.Channel's factories: the same in both flavours.
    def unary_unary(
        self,
        method: str,
        request_serializer: Any = None,
        response_deserializer: Any = None,
        _registered_method: bool = False,
    ) -> Any:
        return self._calls.UnaryUnary(
            self, method, request_serializer, response_deserializer, _registered_method
        )

    def unary_stream(
        self,
        method: str,
        request_serializer: Any = None,
        response_deserializer: Any = None,
        _registered_method: bool = False,
    ) -> Any:
        return self._calls.UnaryStream(
            self, method, request_serializer, response_deserializer, _registered_method
        )

    def stream_unary(
        self,
        method: str,
        request_serializer: Any = None,
        response_deserializer: Any = None,
        _registered_method: bool = False,
    ) -> Any:
        return self._calls.StreamUnary(
            self, method, request_serializer, response_deserializer, _registered_method
        )

    def stream_stream(
        self,
        method: str,
        request_serializer: Any = None,
        response_deserializer: Any = None,
        _registered_method: bool = False,
    ) -> Any:
        return self._calls.StreamStream(
            self, method, request_serializer, response_deserializer, _registered_method
        )

    def __repr__(self) -> str:
        return repr(self._balancer).replace("<grpclb", f"<{self._label}", 1)

    def stats(self) -> ChannelStats:
        """A snapshot of every pod and of the channel, like Envoy's admin ``/clusters``."""
        return self._balancer.stats()

    @property
    def settings(self) -> Settings:
        """The validated settings this channel runs with."""
        return self._settings
