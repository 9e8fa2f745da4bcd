"""The table of settings: each one's name, parser, default, and where the default comes from.

``SETTINGS`` is the one source of every setting's name and default: ``Settings``
(``grpclb.config.settings``) reads it, the configuration reference is generated
from it (``python -m grpclb.tools.docgen``), and ``ChannelSettings`` is checked
against it by a test.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import grpc

from grpclb.config.environment import ENV_PREFIX
from grpclb.config.parsing import (
    boolean,
    choice,
    duration,
    file_path,
    integer,
    metadata_key,
    number,
    service_name,
    status_codes,
)
from grpclb.config.service_config import service_config_value

POLICIES = ("round_robin", "least_request", "random", "pick_first", "ring_hash", "maglev")
HASH_POLICIES = ("ring_hash", "maglev")
# Hash tables are built whole whenever membership changes: bounded, so a typo cannot
# ask for gigabytes. "table_size [...] must be prime number limited to 5000011" - Envoy.
MAX_MAGLEV_TABLE_SIZE = 5_000_011
MAX_RING_POINTS_PER_ENDPOINT = 8192

# --- the table ---


@dataclass(frozen=True)
class Setting:
    """One setting: how to read it, its default and where that default comes from."""

    name: str
    parse: Callable[[object], Any]
    default: Any
    help: str
    reference: str = ""

    @property
    def env(self) -> str:
        return ENV_PREFIX + self.name.upper()


_C = grpc.StatusCode
SETTINGS: tuple[Setting, ...] = (
    # balancing
    Setting(
        "policy",
        choice(*POLICIES),
        "least_request",
        "How each call chooses a pod.",
        "Istio's default LEAST_REQUEST",
    ),
    Setting(
        "hash_key",
        metadata_key,
        None,
        "Metadata key whose value selects the pod for ring_hash and maglev; "
        "calls without it are spread randomly.",
        "Envoy hash_policy header",
    ),
    Setting(
        "choice_count",
        integer(2),
        2,
        "Distinct random candidates least_request compares.",
        "Envoy choice_count, gRFC A48",
    ),
    Setting(
        "ring_points_per_endpoint",
        integer(1, MAX_RING_POINTS_PER_ENDPOINT),
        1024,
        "Ring points per pod for ring_hash; fixed per pod so a joining pod moves "
        f"only the keys it takes. At most {MAX_RING_POINTS_PER_ENDPOINT}: at 1024 pods "
        "that is Envoy's largest ring (8M entries); each point costs a few microseconds "
        "to build.",
        "differs from Envoy's fixed total ring size",
    ),
    Setting(
        "maglev_table_size",
        integer(3, MAX_MAGLEV_TABLE_SIZE),
        65537,
        "Maglev lookup table size; a prime larger than the pod count, at most "
        f"{MAX_MAGLEV_TABLE_SIZE:,} as in Envoy; each slot costs a few microseconds "
        "to build.",
        "Envoy table_size",
    ),
    # subsetting
    Setting(
        "subset_size",
        integer(0, optional=True),
        None,
        "Connect to and balance over only this many of the service's pods, chosen by "
        "rendezvous hashing; off uses every pod. Not with ring_hash or maglev.",
        "gRFC A68 random_subsetting",
    ),
    Setting(
        "subset_seed",
        integer(0, 2**63 - 1, optional=True),
        None,
        "Seed of the subset ranking; off (or 0) draws one per process (a fixed 0 with "
        "subset_client_index).",
        "gRFC A68",
    ),
    Setting(
        "subset_client_index",
        integer(0, optional=True, zero_is_off=False),
        None,
        "This client's distinct number (0, 1, 2, ...): deterministic subsetting, every pod "
        "within one client of the others, more clients touched by a pod change; needs "
        "subset_size.",
        "Google SRE book, deterministic subsetting",
    ),
    # DNS
    Setting(
        "dns_refresh_interval",
        duration(),
        5.0,
        "Seconds between DNS resolutions.",
        "Envoy STRICT_DNS dns_refresh_rate",
    ),
    Setting(
        "dns_min_refresh_interval",
        duration(),
        1.0,
        "Least time between two resolutions, also for re-resolutions a failed connection asks for.",
        "Envoy dns_min_refresh_rate is 5s",
    ),
    Setting(
        "dns_respect_ttl",
        boolean,
        True,
        "Resolve again when the answer's TTL runs out, if that is sooner than "
        "dns_refresh_interval.",
        "Envoy respect_dns_ttl (default false)",
    ),
    Setting(
        "hosts_file",
        file_path,
        "/etc/hosts",
        "Hosts file read before DNS, as the system resolver does (localhost, Kubernetes "
        "hostAliases); re-read when it changes; off asks DNS only. Not read when the "
        "target names its DNS server.",
        "glibc nsswitch 'hosts: files dns'",
    ),
    Setting(
        "dns_timeout",
        duration(),
        2.0,
        "Deadline of one resolution; on timeout the last good answer is kept.",
        "",
    ),
    # connection recycling
    Setting(
        "max_connection_age",
        duration(optional=True),
        None,
        "Replace a pod's connection after this age (make before break).",
        "gRPC server MAX_CONNECTION_AGE",
    ),
    Setting(
        "max_connection_age_jitter",
        number(0.0, 1.0),
        0.1,
        "Each connection's age limit is scaled by 1 ± this fraction.",
        "gRPC's ±10%",
    ),
    Setting(
        "max_connection_age_grace",
        duration(optional=True),
        None,
        "How long a replaced connection may finish its calls before they are "
        "cancelled; off waits for them.",
        "gRPC MAX_CONNECTION_AGE_GRACE",
    ),
    Setting(
        "max_requests_per_connection",
        integer(0, optional=True),
        None,
        "Replace a pod's connection after this many calls.",
        "Istio maxRequestsPerConnection",
    ),
    # outlier detection
    Setting(
        "failure_codes",
        status_codes,
        frozenset({_C.UNAVAILABLE, _C.DEADLINE_EXCEEDED, _C.INTERNAL, _C.UNKNOWN, _C.DATA_LOSS}),
        "Status codes that count as a pod failure (comma-separated names).",
        "Envoy's gRPC-to-5xx mapping, without UNIMPLEMENTED",
    ),
    Setting(
        "consecutive_failures",
        integer(0),
        5,
        "Failures in a row that eject a pod at once; 0 disables.",
        "Istio consecutive5xxErrors",
    ),
    Setting(
        "ejection_interval",
        duration(),
        10.0,
        "Period of the success-rate and failure-percentage analysis.",
        "Envoy interval",
    ),
    Setting(
        "success_rate_ejection",
        boolean,
        True,
        "Eject pods whose success rate is far below the others'.",
        "Envoy enforcing_success_rate 100",
    ),
    Setting(
        "success_rate_enforcement_percent",
        integer(0, 100),
        100,
        "Chance, in percent, that a pod found by success-rate analysis is ejected.",
        "gRFC A50 enforcement_percentage; Envoy enforcing_success_rate",
    ),
    Setting(
        "success_rate_stdev_factor",
        number(0.0, 100.0),
        1.9,
        "Eject below mean - factor x stdev of success rates.",
        "Envoy 1900/1000",
    ),
    Setting(
        "success_rate_minimum_hosts",
        integer(1),
        5,
        "Pods with enough volume needed for success-rate analysis.",
        "Envoy",
    ),
    Setting(
        "success_rate_request_volume",
        integer(1),
        100,
        "Calls in an interval for a pod to count in success-rate analysis.",
        "Envoy",
    ),
    Setting(
        "failure_percentage_ejection",
        boolean,
        False,
        "Eject pods whose failure percentage exceeds the threshold.",
        "Envoy enforcing_failure_percentage 0",
    ),
    Setting(
        "failure_percentage_enforcement_percent",
        integer(0, 100),
        100,
        "Chance, in percent, that a pod found by failure-percentage analysis is ejected.",
        "gRFC A50 enforcement_percentage",
    ),
    Setting(
        "failure_percentage_threshold",
        number(0.0, 100.0),
        85.0,
        "Failure percentage at or above which a pod is ejected.",
        "Envoy",
    ),
    Setting(
        "failure_percentage_minimum_hosts",
        integer(1),
        5,
        "Pods needed for failure-percentage analysis.",
        "Envoy",
    ),
    Setting(
        "failure_percentage_request_volume",
        integer(1),
        50,
        "Calls in an interval for a pod to count in failure-percentage analysis.",
        "Envoy",
    ),
    Setting(
        "base_ejection_time",
        duration(),
        30.0,
        "Ejection time, multiplied by the pod's ejection count.",
        "Envoy, Istio",
    ),
    Setting("max_ejection_time", duration(), 300.0, "Cap on one ejection's time.", "Envoy"),
    Setting(
        "max_ejection_percent",
        number(0.0, 100.0),
        10.0,
        "Most pods ejected at once, in percent; one pod may always be ejected.",
        "Envoy max_ejection_percent",
    ),
    Setting(
        "panic_threshold",
        number(0.0, 100.0),
        50.0,
        "Below this percentage of pods not ejected, balance over all pods (ejections ignored).",
        "Envoy healthy_panic_threshold",
    ),
    # active health checking (gRFC A17) and slow start (Envoy slow_start_config)
    Setting(
        "health_check",
        boolean,
        False,
        "Watch each pod's grpc.health.v1 status on its own connection; pods not SERVING "
        "leave rotation, pods without a health service stay in it.",
        "gRFC A17, off by default as in gRPC",
    ),
    Setting(
        "health_check_service_name",
        service_name,
        "",
        "Service name sent in the health Watch; empty asks for the whole server.",
        "gRFC A17 healthCheckConfig.serviceName",
    ),
    Setting(
        "slow_start_window",
        duration(optional=True),
        None,
        "A pod that joins a running set, or returns from ejection or from an unhealthy "
        "status, ramps its weight up over this window (round_robin, least_request, random).",
        "Envoy slow_start_window",
    ),
    Setting(
        "slow_start_aggression",
        number(0.01, 100.0),
        1.0,
        "Shape of the ramp: weight grows as (time / window) ** (1 / aggression).",
        "Envoy aggression",
    ),
    Setting(
        "slow_start_min_weight_percent",
        number(0.0, 100.0),
        10.0,
        "Least weight of a ramping pod, in percent of a full one.",
        "Envoy min_weight_percent",
    ),
    # retries and circuit breaking
    Setting(
        "retries",
        integer(0, 10),
        2,
        "Retries of a failed call on another pod; 0 disables.",
        "Istio default retry policy",
    ),
    Setting(
        "retry_codes",
        status_codes,
        frozenset({_C.UNAVAILABLE}),
        "Status codes that are retried (comma-separated names).",
        "Envoy retry_on unavailable",
    ),
    Setting(
        "retry_backoff_base",
        duration(),
        0.025,
        "Base of the exponential, jittered backoff between attempts.",
        "Envoy 25ms",
    ),
    Setting(
        "retry_backoff_max",
        duration(),
        0.25,
        "Cap of the backoff between attempts.",
        "Envoy 10 x base",
    ),
    Setting(
        "retry_buffer_bytes",
        integer(0),
        262_144,
        "Bytes of a request stream kept for its retries; past them the call is not retried.",
        "gRPC per_rpc_retry_buffer_size",
    ),
    Setting(
        "retry_budget_percent",
        number(0.0, 100.0),
        20.0,
        "Retries in flight as a percentage of calls in flight.",
        "Envoy retry_budget",
    ),
    Setting(
        "retry_budget_min_concurrency",
        integer(0),
        10,
        "Retries in flight always allowed, whatever the budget.",
        "Envoy's is 3",
    ),
    Setting(
        "metrics_endpoint_limit",
        integer(0),
        100,
        "Per-pod metric attributes (grpclb.endpoint) only while the channel has at most "
        "this many pods; 0 never adds them.",
        "bounded cardinality",
    ),
    Setting(
        "max_requests",
        integer(0, optional=True),
        None,
        "Most calls in flight across the channel; more fail at once.",
        "Envoy circuit breaker max_requests",
    ),
    Setting(
        "service_config",
        service_config_value,
        None,
        "A gRPC service config (JSON text, or a dict as keyword): per-method timeouts, "
        "wait_for_ready, retry and hedging policies, retry throttling, and a "
        "loadBalancingConfig mapped onto these settings below keywords and variables; "
        "see docs/service-config.md.",
        "gRPC service config, gRFC A6",
    ),
)
SETTINGS_BY_NAME: dict[str, Setting] = {s.name: s for s in SETTINGS}
