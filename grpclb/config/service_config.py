"""gRPC service config: the JSON gRPC clients accept, parsed and validated as gRPC does.

A service config (gRPC's ``doc/service_config.md``) carries per-method policies
(timeouts, wait-for-ready, gRFC A6 retries and hedging), the retry throttle and
the load-balancing policy. grpclb reads it so that a config written for grpcio
works unchanged, and so that it never reaches the per-pod grpcio channels,
where gRPC's own retries would run nested inside grpclb's.

Parsing is strict where gRPC is strict and lenient where gRPC is lenient:
unknown fields are ignored; wrong types and out-of-range values raise a
``ConfigError`` that names the JSON path. The load-balancing part is mapped
onto grpclb settings (``lb_settings``); ``Settings.load`` applies them below
keywords and environment variables and checks them against grpclb's bounds.
The balancing fields are read in ``grpclb.config.lb_config``, and JSON values
(numbers, durations, status codes, the text itself) in ``grpclb.config.proto_json``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import ROUND_DOWN, Decimal, InvalidOperation
from typing import Any

import grpc

from grpclb.config.lb_config import parse_lb_settings
from grpclb.config.parsing import is_off
from grpclb.config.proto_json import UINT32_MAX, Reader
from grpclb.errors import ConfigError

MAX_ATTEMPTS_CAP = 5  # gRFC A6: a maxAttempts above 5 is treated as 5, not rejected
_MEMO_LIMIT = 4096
_UNSEEN = object()


# --- the parsed values (shapes shared with the call engine) ---------------------------


@dataclass(frozen=True)
class RetryPolicy:
    """gRFC A6 retryPolicy; ``max_attempts`` above 5 is already capped to 5."""

    max_attempts: int
    initial_backoff: float  # seconds, > 0
    max_backoff: float  # seconds, > 0
    backoff_multiplier: float  # > 0
    retryable_status_codes: frozenset[grpc.StatusCode]  # empty only with perAttemptRecvTimeout
    per_attempt_recv_timeout: float | None = None  # seconds, > 0: each attempt's own limit


@dataclass(frozen=True)
class HedgingPolicy:
    """gRFC A6 hedgingPolicy; ``max_attempts`` above 5 is already capped to 5."""

    max_attempts: int
    hedging_delay: float  # seconds, >= 0, default 0
    non_fatal_status_codes: frozenset[grpc.StatusCode]  # may be empty


@dataclass(frozen=True)
class MethodConfig:
    """What a service config says about the methods one ``methodConfig`` entry names."""

    timeout: float | None = None
    wait_for_ready: bool | None = None
    retry_policy: RetryPolicy | None = None
    hedging_policy: HedgingPolicy | None = None
    retries_off: bool = False
    """``"retryPolicy": null`` written explicitly: no retries at all for these methods,
    not even grpclb's channel-wide ``retries``."""
    message_limits: tuple[tuple[str, int], ...] = ()
    """``maxRequestMessageBytes`` / ``maxResponseMessageBytes`` as given: grpcio enforces
    them in each pod channel (``ServiceConfig.pod_channel_config``)."""


@dataclass(frozen=True)
class RetryThrottling:
    """gRFC A6 retryThrottling: maxTokens in (0, 1000], tokenRatio > 0 (3 decimals)."""

    max_tokens: float
    token_ratio: float


MethodKey = tuple[str, str]  # (service, method); ("", "") is the default, (service, "") a service


@dataclass(frozen=True, eq=False)
class ServiceConfig:
    """A parsed, validated service config; ``method_config`` is on every call's path."""

    lb_settings: Mapping[str, tuple[Any, str]]
    """grpclb setting name -> (value, the JSON path it came from)."""
    method_configs: Mapping[MethodKey, MethodConfig]
    retry_throttling: RetryThrottling | None
    health_check_service_name: str | None
    source: str
    """The normalized JSON (sorted keys, no spaces), for repr and stats."""
    _exact: dict[str, MethodConfig] = field(init=False, repr=False)
    _service: dict[str, MethodConfig] = field(init=False, repr=False)
    _default: MethodConfig | None = field(init=False, repr=False)
    _memo: dict[str, MethodConfig | None] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        exact, service = {}, {}
        for (svc, method), config in self.method_configs.items():
            if method:
                exact[f"/{svc}/{method}"] = config
            elif svc:
                service[svc] = config
        object.__setattr__(self, "_exact", exact)
        object.__setattr__(self, "_service", service)
        object.__setattr__(self, "_default", self.method_configs.get(("", "")))
        object.__setattr__(self, "_memo", {})

    def method_config(self, method: str) -> MethodConfig | None:
        """gRPC's match for ``/pkg.Service/Method``: exact, then the service, then the default.

        One dict lookup once a method was asked for: the answer is remembered (for at
        most ``_MEMO_LIMIT`` method names, as a channel's methods are a fixed few).
        """
        found = self._memo.get(method, _UNSEEN)
        if found is not _UNSEEN:
            return found  # type: ignore[return-value]
        found = self._match(method)
        if len(self._memo) < _MEMO_LIMIT:
            self._memo[method] = found  # a racing thread stores the same answer
        return found

    def _match(self, method: str) -> MethodConfig | None:
        found = self._exact.get(method)
        if found is not None:
            return found
        slash = method.rfind("/")
        if slash > 0:
            found = self._service.get(method[1:slash] if method[0] == "/" else method[:slash])
            if found is not None:
                return found
        return self._default

    def pod_channel_config(self) -> str | None:
        """The part of this config each pod's grpcio channel enforces itself, or None.

        Per-method message size limits are checked where messages are sent and
        received, so the pod channels get a service config of the same method
        names with these limits alone (no retries, no timeout, no balancing:
        those are grpclb's). grpcio then fails an oversized message with
        RESOURCE_EXHAUSTED, as it fails it on a channel of its own.
        """
        entries = []
        for (service, method), config in self.method_configs.items():
            if config.message_limits:
                name = {"service": service, "method": method} if method else {"service": service}
                entries.append({"name": [name], **dict(config.message_limits)})
        if not entries:
            return None
        return json.dumps({"methodConfig": entries}, sort_keys=True, separators=(",", ":"))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ServiceConfig) and other.source == self.source

    def __hash__(self) -> int:
        return hash(self.source)

    def __repr__(self) -> str:
        return f"<ServiceConfig {self.source}>"


# --- the service config ---------------------------------------------------------------


def parse_service_config(
    raw: str | Mapping[str, Any], where: str = "service_config"
) -> ServiceConfig:
    """Parse and validate a service config given as JSON text or as a dict."""
    read = Reader(where)
    if isinstance(raw, str):
        document = read.loads(raw)
    elif isinstance(raw, Mapping):
        document = dict(raw)
    else:
        raise ConfigError(f"{where}: expected a JSON string or a dict, got {type(raw).__name__}")
    top = read.mapping("(top level)", document)
    try:
        source = json.dumps(top, sort_keys=True, separators=(",", ":"))
    except (TypeError, ValueError) as error:
        raise ConfigError(f"{where}: not JSON-serializable: {error}") from None

    methods: dict[MethodKey, MethodConfig] = {}
    for i, entry in enumerate(read.array("methodConfig", top.get("methodConfig", []))):
        path = f"methodConfig[{i}]"
        config = _method_config(read, path, read.mapping(path, entry))
        for j, name in enumerate(read.array(f"{path}.name", entry.get("name", []))):
            key = _method_name(read, f"{path}.name[{j}]", name)
            if key in methods:
                # "Each name entry must be unique across the entire service config." - gRPC
                read.fail(f"{path}.name[{j}]", "duplicate name in methodConfig", name)
            methods[key] = config

    throttling = None
    if top.get("retryThrottling") is not None:
        throttling = _retry_throttling(
            read, read.mapping("retryThrottling", top["retryThrottling"])
        )

    health = None
    if top.get("healthCheckConfig") is not None:
        check = read.mapping("healthCheckConfig", top["healthCheckConfig"])
        if check.get("serviceName") is not None:
            health = read.string("healthCheckConfig.serviceName", check["serviceName"])

    lb_settings = dict(parse_lb_settings(read, top))
    if health is not None:
        # gRFC A17: a healthCheckConfig turns client-side health checking on.
        where = "healthCheckConfig.serviceName"
        lb_settings["health_check"] = (True, where)
        lb_settings["health_check_service_name"] = (health, where)
    return ServiceConfig(
        lb_settings=lb_settings,
        method_configs=methods,
        retry_throttling=throttling,
        health_check_service_name=health,
        source=source,
    )


def _method_name(read: Reader, path: str, name: object) -> MethodKey:
    entry = read.mapping(path, name)
    service = _optional_string(read, f"{path}.service", entry.get("service"))
    method = _optional_string(read, f"{path}.method", entry.get("method"))
    if method and not service:
        # service_config.md: an empty service means the default, so it cannot name a method
        read.fail(path, "a name with a method must name its service", name)
    return service, method


def _optional_string(read: Reader, path: str, value: object) -> str:
    """A string field where null means absent, as in proto JSON; false or 0 is refused."""
    return "" if value is None else read.string(path, value)


def _method_config(read: Reader, path: str, entry: Mapping[str, Any]) -> MethodConfig:
    timeout = wait = retry = hedging = None
    if entry.get("timeout") is not None:
        timeout = read.duration(f"{path}.timeout", entry["timeout"])
    if entry.get("waitForReady") is not None:
        wait = read.boolean(f"{path}.waitForReady", entry["waitForReady"])
    limits = []
    for size in ("maxRequestMessageBytes", "maxResponseMessageBytes"):
        if entry.get(size) is not None:
            limits.append((size, read.integer(f"{path}.{size}", entry[size], 0, UINT32_MAX)))
    if entry.get("retryPolicy") is not None:
        retry = _retry_policy(read, f"{path}.retryPolicy", entry["retryPolicy"])
    if entry.get("hedgingPolicy") is not None:
        if retry is not None:
            # "Only one of retryPolicy or hedgingPolicy may be set." - gRFC A6
            read.fail(path, "retryPolicy and hedgingPolicy cannot both be set", show=False)
        hedging = _hedging_policy(read, f"{path}.hedgingPolicy", entry["hedgingPolicy"])
    retries_off = "retryPolicy" in entry and entry["retryPolicy"] is None
    return MethodConfig(timeout, wait, retry, hedging, retries_off, tuple(limits))


def _max_attempts(read: Reader, path: str, policy: Mapping[str, Any]) -> int:
    if policy.get("maxAttempts") is None:
        read.fail(f"{path}.maxAttempts", "is required", show=False)
    attempts = read.integer(
        f"{path}.maxAttempts",
        policy["maxAttempts"],
        2,
        UINT32_MAX,  # the proto's uint32: larger is refused, not capped
        "must be an integer greater than 1",
    )
    return min(attempts, MAX_ATTEMPTS_CAP)


def _retry_policy(read: Reader, path: str, raw: object) -> RetryPolicy:
    policy = read.mapping(path, raw)
    attempts = _max_attempts(read, path, policy)
    for required in ("initialBackoff", "maxBackoff", "backoffMultiplier"):
        if policy.get(required) is None:
            read.fail(f"{path}.{required}", "is required", show=False)
    initial = read.duration(f"{path}.initialBackoff", policy["initialBackoff"], positive=True)
    maximum = read.duration(f"{path}.maxBackoff", policy["maxBackoff"], positive=True)
    raw_multiplier = policy["backoffMultiplier"]
    multiplier = read.number(f"{path}.backoffMultiplier", raw_multiplier)
    if multiplier <= 0:
        read.fail(f"{path}.backoffMultiplier", "must be greater than 0", raw_multiplier)
    raw_codes = policy.get("retryableStatusCodes")
    codes: frozenset[grpc.StatusCode] = frozenset()
    if raw_codes is not None:
        codes = read.status_codes(f"{path}.retryableStatusCodes", raw_codes)
    attempt_timeout: float | None = None
    if policy.get("perAttemptRecvTimeout") is not None:
        raw_timeout = policy["perAttemptRecvTimeout"]
        attempt_timeout = read.duration(f"{path}.perAttemptRecvTimeout", raw_timeout, True)
    elif not codes:
        # gRFC A6: retryableStatusCodes "must be non-empty if perAttemptRecvTimeout is not
        # set" (with it, a policy may retry on the timeout alone, as C core and Java allow)
        missing = "is required" if raw_codes is None else "must not be empty"
        read.fail(
            f"{path}.retryableStatusCodes",
            f"{missing} unless perAttemptRecvTimeout is set",
            raw_codes,
            show=raw_codes is not None,
        )
    return RetryPolicy(attempts, initial, maximum, multiplier, codes, attempt_timeout)


def _hedging_policy(read: Reader, path: str, raw: object) -> HedgingPolicy:
    policy = read.mapping(path, raw)
    attempts = _max_attempts(read, path, policy)
    delay = 0.0
    if policy.get("hedgingDelay") is not None:
        delay = read.duration(f"{path}.hedgingDelay", policy["hedgingDelay"])
    codes: frozenset[grpc.StatusCode] = frozenset()
    if policy.get("nonFatalStatusCodes") is not None:
        codes = read.status_codes(f"{path}.nonFatalStatusCodes", policy["nonFatalStatusCodes"])
    return HedgingPolicy(attempts, delay, codes)


def _retry_throttling(read: Reader, throttling: Mapping[str, Any]) -> RetryThrottling:
    for required in ("maxTokens", "tokenRatio"):
        if throttling.get(required) is None:
            read.fail(f"retryThrottling.{required}", "is required", show=False)
    raw_max, raw_ratio = throttling["maxTokens"], throttling["tokenRatio"]
    max_tokens = read.number("retryThrottling.maxTokens", raw_max)
    if not 0 < max_tokens <= 1000:
        # gRFC A6: maxTokens in (0, 1000]
        read.fail("retryThrottling.maxTokens", "must be greater than 0 and at most 1000", raw_max)
    ratio = read.number("retryThrottling.tokenRatio", raw_ratio)
    try:
        # gRFC A6: tokenRatio keeps 3 decimal places; further ones are ignored
        ratio = float(Decimal(str(ratio)).quantize(Decimal("0.001"), rounding=ROUND_DOWN))
    except InvalidOperation:
        read.fail("retryThrottling.tokenRatio", "must be a finite number", raw_ratio)
    if ratio <= 0:
        read.fail("retryThrottling.tokenRatio", "must be at least 0.001", raw_ratio)
    return RetryThrottling(max_tokens, ratio)


def service_config_value(raw: object, where: str = "service_config") -> ServiceConfig | None:
    """A parsed service config from JSON text, a dict, or one already parsed; off is None."""
    if isinstance(raw, ServiceConfig):
        return raw
    if is_off(raw):
        return None
    return parse_service_config(raw, where)  # type: ignore[arg-type]
