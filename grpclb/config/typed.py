"""The settings as a ``TypedDict``, so type checkers and IDEs know every keyword.

``grpclb.channel(target, **settings: Unpack[ChannelSettings])`` (PEP 692) lets mypy
reject ``polcy="round_robin"`` or ``retries="3"`` where it is written, and lets an
editor complete the names; ``Settings.load`` still validates every value at run time,
with the same ConfigError for callers that are not type-checked.

The types are what a keyword may be, not what the setting becomes: a duration is
seconds or a string such as ``"250ms"``, status codes are names or ``grpc.StatusCode``
values. ``SETTINGS`` stays the one source of names, defaults and parsers; a unit test
fails when a setting is in one and not the other.
"""

from __future__ import annotations

import sys
from typing import Any, Literal, TypeAlias, TypedDict

import grpc

if sys.version_info >= (3, 11):
    from typing import Unpack
else:  # Python 3.10: PEP 692's Unpack comes from typing_extensions (a dependency there)
    from typing_extensions import Unpack

__all__ = ["ChannelSettings", "Duration", "Policy", "StatusCodes", "Unpack"]

Policy: TypeAlias = Literal[
    "round_robin", "least_request", "random", "pick_first", "ring_hash", "maglev"
]
Duration: TypeAlias = float | str
"""Seconds (``5``, ``0.25``) or a Go-style duration (``"250ms"``, ``"5s"``, ``"1m30s"``)."""
StatusCodeName: TypeAlias = "grpc.StatusCode | str"
StatusCodes: TypeAlias = (
    str
    | grpc.StatusCode
    | list[StatusCodeName]
    | tuple[StatusCodeName, ...]
    | set[StatusCodeName]
    | frozenset[StatusCodeName]
)
"""``"UNAVAILABLE,INTERNAL"``, one code, or a collection of codes or their names."""


class ChannelSettings(TypedDict, total=False):
    """Every setting of ``grpclb.SETTINGS`` by its keyword; see docs/configuration.md.

    ``None`` (or ``0``) turns the optional ones off, as ``"off"`` does in a variable.
    """

    # balancing
    policy: Policy
    hash_key: str | None
    choice_count: int
    subset_size: int | None
    subset_seed: int | None
    subset_client_index: int | None
    ring_points_per_endpoint: int
    maglev_table_size: int
    # DNS
    dns_refresh_interval: Duration
    dns_min_refresh_interval: Duration
    dns_respect_ttl: bool
    hosts_file: str | None
    dns_timeout: Duration
    # connection recycling
    max_connection_age: Duration | None
    max_connection_age_jitter: float
    max_connection_age_grace: Duration | None
    max_requests_per_connection: int | None
    # outlier detection
    failure_codes: StatusCodes
    consecutive_failures: int
    ejection_interval: Duration
    success_rate_ejection: bool
    success_rate_enforcement_percent: int
    success_rate_stdev_factor: float
    success_rate_minimum_hosts: int
    success_rate_request_volume: int
    failure_percentage_ejection: bool
    failure_percentage_enforcement_percent: int
    failure_percentage_threshold: float
    failure_percentage_minimum_hosts: int
    failure_percentage_request_volume: int
    base_ejection_time: Duration
    max_ejection_time: Duration
    max_ejection_percent: float
    panic_threshold: float
    # retries and circuit breaking
    retries: int
    retry_codes: StatusCodes
    retry_backoff_base: Duration
    retry_backoff_max: Duration
    retry_buffer_bytes: int
    retry_budget_percent: float
    retry_budget_min_concurrency: int
    metrics_endpoint_limit: int
    max_requests: int | None
    # the gRPC service config (docs/service-config.md)
    service_config: str | dict[str, Any] | None
    # active health checking (gRFC A17) and slow start (Envoy)
    health_check: bool
    health_check_service_name: str
    slow_start_window: Duration | None
    slow_start_aggression: float
    slow_start_min_weight_percent: float
