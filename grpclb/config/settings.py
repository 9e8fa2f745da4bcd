"""Settings: one frozen value, validated once, from keywords, environment, defaults.

Every setting is declared once in ``SETTINGS`` with its parser, default and the
reference its default comes from; the docs' configuration table is generated
from the same list, so code and docs cannot drift. Precedence is keyword
argument, then the channel's ``<env_prefix>GRPCLB_<NAME>`` variable (when it has
an ``env_prefix``), then the ``GRPCLB_<NAME>`` environment variable, then what
the ``service_config`` setting maps onto the setting (see docs/service-config.md),
then a grpcio channel option lifted by the shell (``grpc.lb_policy_name``),
then the default. A bad value is a ``ConfigError`` naming where it came from;
never a fallback.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import grpc

from grpclb.config import environment
from grpclb.config.environment import ENV_PREFIX, check_env_prefix
from grpclb.config.parsing import (
    Invalid,
)
from grpclb.config.service_config import ServiceConfig, service_config_value
from grpclb.config.table import (
    HASH_POLICIES,
    POLICIES,
    SETTINGS,
    SETTINGS_BY_NAME,
    Setting,
)
from grpclb.core.hashing import is_prime
from grpclb.errors import ConfigError

__all__ = [
    "HASH_POLICIES",
    "POLICIES",
    "SETTINGS",
    "SETTINGS_BY_NAME",
    "Setting",
    "Settings",
]
SERVICE_CONFIG_ORIGIN = "service config "  # how origins of service-config values begin
# Service-config values taken as the service config gives them, past the keyword parser's
# bounds: gRPC sends any healthCheckConfig.serviceName as it is (the keyword parser strips
# and wants printable ASCII), and A50's stdevFactor goes beyond the keyword's 100.
_AS_GIVEN = frozenset({"health_check_service_name", "success_rate_stdev_factor"})
Fallbacks = Mapping[str, tuple[object, str]]  # setting -> (raw value, where it came from)


@dataclass(frozen=True)
class Settings:
    """The validated configuration of one channel."""

    policy: str = "least_request"
    hash_key: str | None = None
    choice_count: int = 2
    ring_points_per_endpoint: int = 1024
    maglev_table_size: int = 65537
    subset_size: int | None = None
    subset_seed: int | None = None
    subset_client_index: int | None = None
    dns_refresh_interval: float = 5.0
    dns_min_refresh_interval: float = 1.0
    dns_respect_ttl: bool = True
    hosts_file: str | None = "/etc/hosts"
    dns_timeout: float = 2.0
    max_connection_age: float | None = None
    max_connection_age_jitter: float = 0.1
    max_connection_age_grace: float | None = None
    max_requests_per_connection: int | None = None
    failure_codes: frozenset[grpc.StatusCode] = SETTINGS_BY_NAME["failure_codes"].default
    consecutive_failures: int = 5
    ejection_interval: float = 10.0
    success_rate_ejection: bool = True
    success_rate_enforcement_percent: int = 100
    success_rate_stdev_factor: float = 1.9
    success_rate_minimum_hosts: int = 5
    success_rate_request_volume: int = 100
    failure_percentage_ejection: bool = False
    failure_percentage_enforcement_percent: int = 100
    failure_percentage_threshold: float = 85.0
    failure_percentage_minimum_hosts: int = 5
    failure_percentage_request_volume: int = 50
    base_ejection_time: float = 30.0
    max_ejection_time: float = 300.0
    max_ejection_percent: float = 10.0
    panic_threshold: float = 50.0
    health_check: bool = False
    health_check_service_name: str = ""
    slow_start_window: float | None = None
    slow_start_aggression: float = 1.0
    slow_start_min_weight_percent: float = 10.0
    retries: int = 2
    retry_codes: frozenset[grpc.StatusCode] = frozenset({grpc.StatusCode.UNAVAILABLE})
    retry_backoff_base: float = 0.025
    retry_backoff_max: float = 0.25
    retry_buffer_bytes: int = 262_144
    retry_budget_percent: float = 20.0
    retry_budget_min_concurrency: int = 10
    metrics_endpoint_limit: int = 100
    max_requests: int | None = None
    service_config: ServiceConfig | None = None

    # Where each loaded value came from; None when the value was built directly.
    _origin: ClassVar[Mapping[str, str] | None] = None

    @classmethod
    def load(
        cls,
        overrides: Mapping[str, object] | None = None,
        environ: Mapping[str, str] | None = None,
        fallbacks: Fallbacks | None = None,
        *,
        env_prefix: str | None = None,
    ) -> Settings:
        """Keywords, then the environment, the service config, ``fallbacks``, defaults.

        With ``env_prefix="PAYMENTS_"``, ``PAYMENTS_GRPCLB_<NAME>`` comes before the
        process-wide ``GRPCLB_<NAME>`` (see grpclb.config.environment for why).
        """
        overrides = dict(overrides or {})
        fallbacks = fallbacks or {}
        environ = os.environ if environ is None else environ
        unknown = sorted(set(overrides) - SETTINGS_BY_NAME.keys())
        if unknown:
            raise ConfigError(
                f"unknown setting {unknown[0]!r}; known settings are: {', '.join(SETTINGS_BY_NAME)}"
            )
        from_env = environment.read(environ, SETTINGS_BY_NAME, check_env_prefix(env_prefix))
        values: dict[str, Any] = {}
        origin: dict[str, str] = {}
        service_config = _load_service_config(overrides, from_env, origin)
        mapped = service_config.lb_settings if service_config is not None else {}
        for setting in SETTINGS:
            if setting.name == "service_config":
                values[setting.name] = service_config
                continue
            if setting.name in overrides:
                raw, where = overrides[setting.name], f"keyword {setting.name}"
            elif setting.name in from_env:
                raw, variable = from_env[setting.name]
                where = f"environment variable {variable}"
            elif setting.name in mapped:
                raw, path = mapped[setting.name]
                where = SERVICE_CONFIG_ORIGIN + path
                if setting.name in _AS_GIVEN:  # already checked by the service config parser
                    values[setting.name], origin[setting.name] = raw, where
                    continue
            elif setting.name in fallbacks:
                raw, where = fallbacks[setting.name]
            else:
                values[setting.name] = setting.default
                continue
            try:
                values[setting.name] = setting.parse(raw)
            except Invalid as exc:
                raise ConfigError(f"{where}={raw!r} is invalid: {exc}") from None
            origin[setting.name] = where
        settings = cls(**values)
        settings._check_combinations(origin)
        object.__setattr__(settings, "_origin", origin)
        return settings

    def origin(self, name: str) -> str:
        """Where a setting's value came from: a keyword, a variable, the service config..."""
        if self._origin is None:
            return "given directly"
        return self._origin.get(name, "default")

    def _check_combinations(self, origin: Mapping[str, str]) -> None:
        def where(name: str) -> str:
            return origin.get(name, f"{name} (default)")

        if (
            self.policy in HASH_POLICIES
            and self.hash_key is None
            and not _from_service_config(origin, "policy", "hash_key")
        ):
            # A service config's ring_hash_experimental without requestHashHeader says
            # "no key" itself (gRFC A76): its calls are spread at random.
            raise ConfigError(
                f"{where('policy')}={self.policy!r} needs hash_key (or {ENV_PREFIX}HASH_KEY): "
                "the metadata key whose value selects the pod"
            )
        if self.subset_size is not None and self.policy in HASH_POLICIES:
            allowed = ", ".join(p for p in POLICIES if p not in HASH_POLICIES)
            raise ConfigError(
                f"{where('subset_size')}={self.subset_size} is invalid with "
                f"{where('policy')}={self.policy!r}: consistent hashing needs every client to "
                f"see the same pods; use one of {allowed} "
                "or turn subset_size off"
            )
        if self.subset_client_index is not None and self.subset_size is None:
            raise ConfigError(
                f"{where('subset_client_index')}={self.subset_client_index} needs subset_size "
                "(the number of pods per client)"
            )
        if not is_prime(self.maglev_table_size):
            raise ConfigError(
                f"{where('maglev_table_size')}={self.maglev_table_size} is invalid: "
                "must be a prime number (the Maglev paper's table size, e.g. 65537)"
            )
        if self.max_ejection_time < self.base_ejection_time and not _from_service_config(
            origin, "max_ejection_time"
        ):
            # A service config's maxEjectionTime may be lower: the cap is then
            # baseEjectionTime, as in gRPC (core.outlier caps at the larger of the two).
            raise ConfigError(
                f"{where('max_ejection_time')}={self.max_ejection_time:g}s is invalid: "
                f"must be at least base_ejection_time ({self.base_ejection_time:g}s)"
            )
        if self.retry_backoff_max < self.retry_backoff_base:
            raise ConfigError(
                f"{where('retry_backoff_max')}={self.retry_backoff_max:g}s is invalid: "
                f"must be at least retry_backoff_base ({self.retry_backoff_base:g}s)"
            )

    def replace(self, **changes: object) -> Settings:
        """A copy with some settings changed, validated like the original.

        Values that came from the service config or from defaults are derived
        again, so replacing ``service_config`` changes what it maps.
        """
        merged: dict[str, object] = {}
        fallbacks: dict[str, tuple[object, str]] = {}
        for f in dataclasses.fields(self):
            where = "keyword" if self._origin is None else self._origin.get(f.name)
            if where is None or where.startswith(SERVICE_CONFIG_ORIGIN):
                continue
            if where.startswith("channel option"):
                fallbacks[f.name] = (getattr(self, f.name), where)
            else:
                merged[f.name] = getattr(self, f.name)
        merged.update(changes)
        return Settings.load(merged, environ={}, fallbacks=fallbacks)


def _from_service_config(origin: Mapping[str, str], *names: str) -> bool:
    return all(origin.get(n, "").startswith(SERVICE_CONFIG_ORIGIN) for n in names)


def _load_service_config(
    overrides: Mapping[str, object],
    from_env: Mapping[str, tuple[str, str]],
    origin: dict[str, str],
) -> ServiceConfig | None:
    """The ``service_config`` setting, first: it supplies values to the others."""
    setting = SETTINGS_BY_NAME["service_config"]
    if setting.name in overrides:
        raw, where = overrides[setting.name], f"keyword {setting.name}"
    elif setting.name in from_env:
        raw, variable = from_env[setting.name]
        where = f"environment variable {variable}"
    else:
        return None
    origin[setting.name] = where
    return service_config_value(raw, where)
