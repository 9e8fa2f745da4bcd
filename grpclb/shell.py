"""What the sync and asyncio channels share around the balancer core.

Both are thin shells: they parse the target and settings the same way, give
every pod channel the same options, own one ``Balancer`` with its telemetry,
and answer ``stats()`` and ``repr()`` the same way. Only their I/O (threads or
tasks, grpcio or grpc.aio channels) and call paths differ.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Mapping, Sequence
from types import ModuleType
from typing import Any

import grpc
from opentelemetry.metrics import MeterProvider

from grpclb.config.service_config import service_config_value
from grpclb.config.settings import Settings
from grpclb.config.target import Target, parse_target
from grpclb.core.attempt import Attempt
from grpclb.core.balancer import Balancer, Clock
from grpclb.core.retry import CallPolicy, method_policy
from grpclb.core.throttle import RetryThrottle
from grpclb.errors import ConfigError
from grpclb.stats import ChannelStats
from grpclb.telemetry import telemetry_for

ChannelOptions = Sequence[tuple[str, Any]]
PodOptions = list[tuple[str, Any]]
Fallbacks = dict[str, tuple[object, str]]


def lift_grpc_options(
    options: ChannelOptions, overrides: Mapping[str, object]
) -> tuple[PodOptions, dict[str, object], Fallbacks]:
    """Take the grpcio options that configure balancing out of what pod channels get.

    ``grpc.service_config`` becomes the ``service_config`` setting (as if given
    as that keyword): left on the pod channels, gRPC's own retries and policy
    would run inside each pod's channel, nested under grpclb's. ``grpc.lb_policy_name``
    becomes ``policy``, and ``grpc.per_rpc_retry_buffer_size`` ``retry_buffer_bytes``,
    at the lowest precedence above the default. Returns the
    pod options, the overrides and the fallbacks for ``Settings.load``.
    """
    pod_options: PodOptions = []
    lifted = dict(overrides)
    fallbacks: Fallbacks = {}
    for name, value in options:
        if name == "grpc.service_config":
            if "service_config" in lifted:
                other = "keyword service_config" if "service_config" in overrides else "again"
                raise ConfigError(
                    f"service config given twice: channel option grpc.service_config and {other}; "
                    "give only one"
                )
            where = "channel option grpc.service_config"
            lifted["service_config"] = service_config_value(value, where)
        elif name == "grpc.lb_policy_name":
            fallbacks["policy"] = (value, "channel option grpc.lb_policy_name")
        elif name == "grpc.per_rpc_retry_buffer_size":
            fallbacks["retry_buffer_bytes"] = (
                value,
                "channel option grpc.per_rpc_retry_buffer_size",
            )
        else:
            pod_options.append((name, value))
    return pod_options, lifted, fallbacks


def settings_from_options(
    options: ChannelOptions,
    overrides: Mapping[str, object],
    environ: Mapping[str, str] | None = None,
    *,
    env_prefix: str | None = None,
) -> tuple[Settings, PodOptions]:
    """The channel's settings (keywords, variables, lifted grpcio options) and pod options."""
    pod_options, lifted, fallbacks = lift_grpc_options(options, overrides)
    return Settings.load(lifted, environ, fallbacks, env_prefix=env_prefix), pod_options


def pod_channel_options(
    target: Target, options: ChannelOptions, secure: bool, service_config: str | None = None
) -> list[tuple[str, Any]]:
    """Options for one pod's channel: its own TCP connection, the service's name, no retries,
    no channelz.

    The call authority and the TLS name stay the service's, so a certificate
    for the service verifies while we dial a pod's IP; verification is never
    switched off. ``service_config``: what of the user's service config grpcio
    enforces per pod (``ServiceConfig.pod_channel_config``), never all of it.
    """
    merged = list(options)
    names = {name for name, _ in merged}
    merged.append(("grpc.use_local_subchannel_pool", 1))
    if service_config is not None:
        merged.append(("grpc.service_config", service_config))
    if "grpc.enable_retries" not in names:
        # grpclb is the one retry layer: grpcio's own, inside a pod's channel, would only
        # ever retry on that same pod, and its machinery costs every call (docs/service-config.md).
        merged.append(("grpc.enable_retries", 0))
    if "grpc.enable_channelz" not in names:
        # A pod channel is grpclb's own, not the user's: its channelz node would be one
        # of hundreds, and keeping it costs the client throughput (docs/service-config.md).
        merged.append(("grpc.enable_channelz", 0))
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
    _calls: ModuleType  # the flavour's multicallables: grpclb.sync.calls, grpclb.aio.multicallables
    _attempt_type: type[Attempt] = Attempt  # what a pick returns, in this flavour
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
        options = check_channel_arguments(credentials, options)
        if settings is None:
            settings, options = settings_from_options(options, {})
        else:
            options, lifted, _ = lift_grpc_options(options, {})
            if "service_config" in lifted:
                raise ConfigError(
                    "channel option grpc.service_config cannot be combined with settings=: "
                    "give it as Settings.load({'service_config': ...}) instead"
                )
        self._settings = settings
        self._credentials = credentials
        config = self._settings.service_config
        self._options = pod_channel_options(
            self._target,
            options,
            credentials is not None,
            None if config is None else config.pod_channel_config(),
        )
        self._clock = clock
        self._hash_key = self._settings.hash_key
        self._rng = rng or random.Random()
        self._policies: dict[tuple[str, bool], CallPolicy] = {}
        throttling = None if config is None else config.retry_throttling
        self._throttle = None if throttling is None else RetryThrottle(throttling)
        # The flavour is the balancer's transport: it does the I/O the core asks for.
        self._balancer = Balancer(
            self._target,
            self._settings,
            self,  # type: ignore[arg-type]
            clock=clock,
            rng=rng,
            attempt_type=self._attempt_type,
        )
        self._balancer.telemetry = telemetry_for(
            self._target.text,
            meter_provider,
            self._settings.metrics_endpoint_limit,
            self._balancer.observe,
        )
        self._timed = self._balancer.telemetry.enabled  # call durations are recorded

    def _note_method(self, method: str, registered: bool) -> None:
        """Generated stubs register their methods; only those are named in metrics (A66)."""
        if registered:
            self._balancer.telemetry.register_method(method)

    # grpc.Channel's and grpc.aio.Channel's factories: the same in both flavours.
    def unary_unary(
        self,
        method: str,
        request_serializer: Any = None,
        response_deserializer: Any = None,
        _registered_method: bool = False,
    ) -> Any:
        self._note_method(method, _registered_method)
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
        self._note_method(method, _registered_method)
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
        self._note_method(method, _registered_method)
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
        self._note_method(method, _registered_method)
        return self._calls.StreamStream(
            self, method, request_serializer, response_deserializer, _registered_method
        )

    # --- what both call paths ask of their channel ------------------------------------

    def _policy_for(self, method: str, request_stream: bool) -> CallPolicy:
        """The retry or hedging policy of ``method``'s calls, resolved once per method."""
        key = (method, request_stream)
        policy = self._policies.get(key)
        if policy is None:
            policy = method_policy(
                self._settings, method, request_stream, self._rng, self._throttle
            )
            self._policies[key] = policy
        return policy

    def _call_finished(self, method: str, code: grpc.StatusCode | None, started: float) -> None:
        """A logical call (retries and hedges inside) ended: gRFC A66's call duration."""
        telemetry = self._balancer.telemetry
        if telemetry.enabled and code is not None:  # None: the caller's own error, no status
            telemetry.call_finished(method, code, time.perf_counter() - started)

    def _call_timer(self, method: str) -> Callable[[Any, grpc.StatusCode | None], None] | None:
        """``_call_finished`` for a call starting now, as an attempt's ``then``; or None."""
        if not self._balancer.telemetry.enabled:
            return None
        started = time.perf_counter()
        return lambda _call, code: self._call_finished(method, code, started)

    def __repr__(self) -> str:
        return repr(self._balancer).replace("<grpclb", f"<{self._label}", 1)

    def stats(self) -> ChannelStats:
        """A snapshot of every pod and of the channel, like Envoy's admin ``/clusters``."""
        return self._balancer.stats()

    @property
    def settings(self) -> Settings:
        """The validated settings this channel runs with."""
        return self._settings
