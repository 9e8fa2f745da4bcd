"""Service config parsing, table-tested in grpc-go's style: (id, input, want or error).

Many rows are gRPC's own cases, from grpc-go's ``service_config_test.go`` and
C core's ``retry_service_config_test.cc``, so grpclb accepts and refuses what
gRPC does, and its errors name the JSON path.
"""

from __future__ import annotations

import json
from typing import Any

import grpc
import pytest

from grpclb.config.lb_config import NATIVE_POLICY_FIELDS, SUPPORTED_POLICIES
from grpclb.config.service_config import (
    HedgingPolicy,
    MethodConfig,
    RetryPolicy,
    RetryThrottling,
    ServiceConfig,
    parse_service_config,
)
from grpclb.config.settings import POLICIES
from grpclb.errors import ConfigError

C = grpc.StatusCode


def method(name: dict[str, str], **fields: Any) -> dict[str, Any]:
    return {"methodConfig": [{"name": [name], **fields}]}


FOO_BAR = {"service": "foo", "method": "Bar"}
TEST_METHOD = {"service": "TestServ", "method": "TestMethod"}


def retry(**changes: Any) -> dict[str, Any]:
    """C core's valid retry policy, with some fields changed (None removes one)."""
    policy: dict[str, Any] = {
        "maxAttempts": 3,
        "initialBackoff": "1s",
        "maxBackoff": "120s",
        "backoffMultiplier": 1.6,
        "retryableStatusCodes": ["ABORTED"],
    }
    policy.update(changes)
    return method(TEST_METHOD, retryPolicy={k: v for k, v in policy.items() if v is not None})


def hedging(**policy: Any) -> dict[str, Any]:
    return method(TEST_METHOD, hedgingPolicy=policy)


def lb(*entries: dict[str, Any]) -> dict[str, Any]:
    return {"loadBalancingConfig": list(entries)}


def outlier(**config: Any) -> dict[str, Any]:
    return lb({"outlier_detection_experimental": {"childPolicy": [{"round_robin": {}}], **config}})


# --- method configs: (id, config, method asked for, want) -----------------------------

METHOD_CASES: list[tuple[str, Any, str, MethodConfig | None]] = [
    # grpc-go TestParseWaitForReady / TestPraseTimeOut / TestPraseMsgSize
    (
        "wait_for_ready_true",
        method(FOO_BAR, waitForReady=True),
        "/foo/Bar",
        MethodConfig(wait_for_ready=True),
    ),
    (
        "wait_for_ready_false",
        method(FOO_BAR, waitForReady=False),
        "/foo/Bar",
        MethodConfig(wait_for_ready=False),
    ),
    ("timeout_1s", method(FOO_BAR, timeout="1s"), "/foo/Bar", MethodConfig(timeout=1.0)),
    (
        "message_sizes_kept_for_pod_channels",
        method(FOO_BAR, maxRequestMessageBytes=1024, maxResponseMessageBytes="2048"),
        "/foo/Bar",
        MethodConfig(
            message_limits=(("maxRequestMessageBytes", 1024), ("maxResponseMessageBytes", 2048))
        ),
    ),
    # C core ValidRetryPolicy
    (
        "retry_policy",
        retry(),
        "/TestServ/TestMethod",
        MethodConfig(retry_policy=RetryPolicy(3, 1.0, 120.0, 1.6, frozenset({C.ABORTED}))),
    ),
    (
        "retry_numeric_string_multiplier",
        retry(backoffMultiplier="1.6"),
        "/TestServ/TestMethod",
        MethodConfig(retry_policy=RetryPolicy(3, 1.0, 120.0, 1.6, frozenset({C.ABORTED}))),
    ),
    (
        "retry_codes_by_number",
        retry(retryableStatusCodes=[14, "UNAVAILABLE", "INTERNAL"]),
        "/TestServ/TestMethod",
        MethodConfig(
            retry_policy=RetryPolicy(3, 1.0, 120.0, 1.6, frozenset({C.UNAVAILABLE, C.INTERNAL}))
        ),
    ),
    (
        "retry_max_attempts_capped_at_5",
        retry(maxAttempts=7),
        "/TestServ/TestMethod",
        MethodConfig(retry_policy=RetryPolicy(5, 1.0, 120.0, 1.6, frozenset({C.ABORTED}))),
    ),
    (
        "retry_per_attempt_recv_timeout",
        retry(perAttemptRecvTimeout="1s"),
        "/TestServ/TestMethod",
        MethodConfig(retry_policy=RetryPolicy(3, 1.0, 120.0, 1.6, frozenset({C.ABORTED}), 1.0)),
    ),
    (
        "retry_policy_null_turns_retries_off",
        method(FOO_BAR, retryPolicy=None),
        "/foo/Bar",
        MethodConfig(retries_off=True),
    ),
    (
        "retry_policy_absent_leaves_retries_on",
        method(FOO_BAR, timeout="2s"),
        "/foo/Bar",
        MethodConfig(timeout=2.0),
    ),
    (
        "hedging_defaults",
        hedging(maxAttempts=3),
        "/TestServ/TestMethod",
        MethodConfig(hedging_policy=HedgingPolicy(3, 0.0, frozenset())),
    ),
    (
        "hedging_full",
        hedging(maxAttempts=9, hedgingDelay="0.5s", nonFatalStatusCodes=["UNAVAILABLE", 13]),
        "/TestServ/TestMethod",
        MethodConfig(hedging_policy=HedgingPolicy(5, 0.5, frozenset({C.UNAVAILABLE, C.INTERNAL}))),
    ),
    (
        "unknown_fields_ignored",
        method(FOO_BAR, timeout="1s", somethingNew={"x": 1}),
        "/foo/Bar",
        MethodConfig(timeout=1.0),
    ),
    ("other_method_gets_nothing", method(FOO_BAR, timeout="1s"), "/foo/Baz", None),
    (
        "service_default",
        method({"service": "foo"}, timeout="3s"),
        "/foo/Baz",
        MethodConfig(timeout=3.0),
    ),
    (
        "global_default_empty_name",
        method({}, timeout="4s"),
        "/any.Svc/Any",
        MethodConfig(timeout=4.0),
    ),
    (
        "global_default_empty_service",
        method({"service": ""}, timeout="4s"),
        "/any.Svc/Any",
        MethodConfig(timeout=4.0),
    ),
    (
        "entry_without_names_applies_to_nothing",
        {"methodConfig": [{"timeout": "1s"}]},
        "/foo/Bar",
        None,
    ),
]


@pytest.mark.parametrize(
    ("config", "name", "want"), [c[1:] for c in METHOD_CASES], ids=[c[0] for c in METHOD_CASES]
)
def test_method_config(config: Any, name: str, want: MethodConfig | None) -> None:
    assert parse_service_config(json.dumps(config)).method_config(name) == want
    assert parse_service_config(config).method_config(name) == want  # a dict parses the same


def test_matching_prefers_exact_then_service_then_default() -> None:
    config = parse_service_config(
        {
            "methodConfig": [
                {"name": [{}], "timeout": "1s"},
                {"name": [{"service": "pkg.Svc"}], "timeout": "2s"},
                {"name": [{"service": "pkg.Svc", "method": "Exact"}], "timeout": "3s"},
            ]
        }
    )
    assert config.method_config("/pkg.Svc/Exact") == MethodConfig(timeout=3.0)
    assert config.method_config("/pkg.Svc/Other") == MethodConfig(timeout=2.0)
    assert config.method_config("/other.Svc/Exact") == MethodConfig(timeout=1.0)


def test_one_entry_may_name_several_methods() -> None:
    config = parse_service_config(
        {"methodConfig": [{"name": [FOO_BAR, {"service": "baz"}], "waitForReady": True}]}
    )
    assert (
        config.method_config("/foo/Bar")
        == config.method_config("/baz/Any")
        == MethodConfig(wait_for_ready=True)
    )


# --- durations (grpc-go TestParseDuration) ----------------------------------------------


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("1s", 1.0),
        ("1.1s", 1.1),
        ("1.s", 1.0),
        ("1.0s", 1.0),
        (".002s", 0.002),
        (".002000s", 0.002),
        ("0.003s", 0.003),
        ("0.000004s", 0.000004),
        ("5000.000000009s", 5000.000000009),
        ("2147483647s", 2147483647.0),
        ("0s", 0.0),
    ],
)
def test_proto_json_durations(text: str, seconds: float) -> None:
    config = parse_service_config(method(FOO_BAR, timeout=text))
    assert config.method_config("/foo/Bar") == MethodConfig(timeout=pytest.approx(seconds))  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "text",
    ["1", "s", ".s", "1 s", " 1s", "1ms", "1.1.1s", "Xs", "as", ".0000000001s", "3c", "-1s", "1m"],
)
def test_bad_durations_name_the_path(text: str) -> None:
    with pytest.raises(ConfigError, match=r"^service_config: methodConfig\[0\]\.timeout: "):
        parse_service_config(method(FOO_BAR, timeout=text))


def test_a_duration_must_be_a_string() -> None:
    with pytest.raises(
        ConfigError, match=r"methodConfig\[0\]\.timeout: must be a duration string .*\(got 1\)"
    ):
        parse_service_config(method(FOO_BAR, timeout=1))


# --- errors: (id, config, fragment of the message) ---------------------------------------

ERROR_CASES: list[tuple[str, Any, str]] = [
    ("not_json", "{", "service_config: not valid JSON"),
    ("not_an_object", "[]", "(top level): must be a JSON object (got [])"),
    ("method_config_not_array", {"methodConfig": {}}, "methodConfig: must be a JSON array"),
    # grpc-go
    (
        "lb_policy_not_string",
        {"loadBalancingPolicy": 1},
        "loadBalancingPolicy: must be a string (got 1)",
    ),
    (
        "wait_for_ready_not_bool",
        method(FOO_BAR, waitForReady="fall"),
        "methodConfig[0].waitForReady: must be true or false",
    ),
    (
        "duplicate_name",
        {
            "methodConfig": [
                {"name": [FOO_BAR], "timeout": "1s"},
                {"name": [FOO_BAR], "timeout": "2s"},
            ]
        },
        "methodConfig[1].name[0]: duplicate name",
    ),
    (
        "duplicate_default",
        {"methodConfig": [{"name": [{}]}, {"name": [{"service": ""}]}]},
        "methodConfig[1].name[0]: duplicate name",
    ),
    (
        "method_without_service",
        method({"method": "Bar"}),
        "methodConfig[0].name[0]: a name with a method must name its service",
    ),
    (
        "message_size_not_integer",
        method(FOO_BAR, maxRequestMessageBytes="big"),
        "methodConfig[0].maxRequestMessageBytes: must be a number",
    ),
    # C core retry_service_config_test
    (
        "throttling_missing_fields",
        {"retryThrottling": {}},
        "retryThrottling.maxTokens: is required",
    ),
    (
        "throttling_negative_max_tokens",
        {"retryThrottling": {"maxTokens": -2, "tokenRatio": 1.0}},
        "retryThrottling.maxTokens: must be greater than 0 and at most 1000 (got -2)",
    ),
    (
        "throttling_max_tokens_over_1000",
        {"retryThrottling": {"maxTokens": 1001, "tokenRatio": 1}},
        "retryThrottling.maxTokens: must be greater than 0 and at most 1000 (got 1001)",
    ),
    (
        "throttling_negative_ratio",
        {"retryThrottling": {"maxTokens": 2, "tokenRatio": -1}},
        "retryThrottling.tokenRatio: must be at least 0.001 (got -1)",
    ),
    (
        "throttling_ratio_below_precision",
        {"retryThrottling": {"maxTokens": 2, "tokenRatio": 0.0004}},
        "retryThrottling.tokenRatio: must be at least 0.001",
    ),
    (
        "retry_policy_wrong_type",
        retry() | method(TEST_METHOD, retryPolicy=5),
        "methodConfig[0].retryPolicy: must be a JSON object (got 5)",
    ),
    (
        "retry_max_attempts_missing",
        retry(maxAttempts=None),
        "methodConfig[0].retryPolicy.maxAttempts: is required",
    ),
    (
        "retry_initial_backoff_missing",
        retry(initialBackoff=None),
        "methodConfig[0].retryPolicy.initialBackoff: is required",
    ),
    (
        "retry_max_attempts_wrong_type",
        retry(maxAttempts="FOO"),
        'methodConfig[0].retryPolicy.maxAttempts: must be a number (got "FOO")',
    ),
    (
        "retry_max_attempts_1",
        retry(maxAttempts=1),
        "service_config: methodConfig[0].retryPolicy.maxAttempts: must be an integer greater than 1 (got 1)",  # noqa: E501
    ),
    (
        "retry_max_attempts_fraction",
        retry(maxAttempts=2.5),
        "retryPolicy.maxAttempts: must be an integer greater than 1 (got 2.5)",
    ),
    (
        "retry_initial_backoff_wrong_type",
        retry(initialBackoff="1sec"),
        'retryPolicy.initialBackoff: must be a duration string such as "0.1s" or "1.5s" (got "1sec")',  # noqa: E501
    ),
    (
        "retry_initial_backoff_zero",
        retry(initialBackoff="0s"),
        'retryPolicy.initialBackoff: must be greater than 0 (got "0s")',
    ),
    (
        "retry_max_backoff_wrong_type",
        retry(maxBackoff="120sec"),
        "retryPolicy.maxBackoff: must be a duration string",
    ),
    (
        "retry_max_backoff_zero",
        retry(maxBackoff="0s"),
        "retryPolicy.maxBackoff: must be greater than 0",
    ),
    (
        "retry_multiplier_wrong_type",
        retry(backoffMultiplier=[]),
        "retryPolicy.backoffMultiplier: must be a number (got [])",
    ),
    (
        "retry_multiplier_zero",
        retry(backoffMultiplier=0),
        "retryPolicy.backoffMultiplier: must be greater than 0 (got 0)",
    ),
    (
        "retry_codes_empty",
        retry(retryableStatusCodes=[]),
        "retryPolicy.retryableStatusCodes: must not be empty unless perAttemptRecvTimeout is set (got [])",  # noqa: E501
    ),
    (
        "retry_codes_not_array",
        retry(retryableStatusCodes=0),
        "retryPolicy.retryableStatusCodes: must be a JSON array (got 0)",
    ),
    (
        "retry_codes_wrong_element_type",
        retry(retryableStatusCodes=[True, 2]),
        "retryPolicy.retryableStatusCodes[0]: must be a status code name",
    ),
    (
        "retry_codes_unknown_names",
        retry(retryableStatusCodes=["FOO", "BAR"]),
        "retryPolicy.retryableStatusCodes[0]: must be a status code name (OK, CANCELLED",
    ),
    (
        "retry_codes_number_out_of_range",
        retry(retryableStatusCodes=[17]),
        "retryPolicy.retryableStatusCodes[0]: must be a status code name",
    ),
    (
        "retry_per_attempt_timeout_unparseable",
        retry(perAttemptRecvTimeout="1sec"),
        "retryPolicy.perAttemptRecvTimeout: must be a duration string",
    ),
    (
        "retry_per_attempt_timeout_wrong_type",
        retry(perAttemptRecvTimeout=1),
        "retryPolicy.perAttemptRecvTimeout: must be a duration string",
    ),
    (
        "retry_per_attempt_timeout_zero",
        retry(perAttemptRecvTimeout="0s"),
        "retryPolicy.perAttemptRecvTimeout: must be greater than 0",
    ),
    # A6 hedging
    (
        "retry_and_hedging",
        method(
            FOO_BAR,
            retryPolicy=retry()["methodConfig"][0]["retryPolicy"],
            hedgingPolicy={"maxAttempts": 2},
        ),
        "methodConfig[0]: retryPolicy and hedgingPolicy cannot both be set",
    ),
    (
        "hedging_max_attempts_missing",
        hedging(),
        "methodConfig[0].hedgingPolicy.maxAttempts: is required",
    ),
    (
        "hedging_max_attempts_1",
        hedging(maxAttempts=1),
        "hedgingPolicy.maxAttempts: must be an integer greater than 1 (got 1)",
    ),
    (
        "hedging_negative_delay",
        hedging(maxAttempts=2, hedgingDelay="-1s"),
        "hedgingPolicy.hedgingDelay: must not be negative",
    ),
    (
        "hedging_codes_not_array",
        hedging(maxAttempts=2, nonFatalStatusCodes="UNAVAILABLE"),
        "hedgingPolicy.nonFatalStatusCodes: must be a JSON array",
    ),
    # A17
    (
        "health_check_name_not_string",
        {"healthCheckConfig": {"serviceName": 5}},
        "healthCheckConfig.serviceName: must be a string (got 5)",
    ),
    # load balancing
    (
        "lb_config_not_array",
        {"loadBalancingConfig": {"round_robin": {}}},
        "loadBalancingConfig: must be a JSON array",
    ),
    (
        "lb_none_supported",
        lb({"grpclb": {}}, {"xds_cluster_impl_experimental": {}}),
        "loadBalancingConfig: no supported policy among grpclb, xds_cluster_impl_experimental; supported: pick_first, round_robin, least_request_experimental",  # noqa: E501
    ),
    ("lb_empty_list", lb(), "loadBalancingConfig: no supported policy among none"),
    (
        "lb_two_keys",
        lb({"round_robin": {}, "pick_first": {}}),
        "loadBalancingConfig[0]: must hold exactly one policy name",
    ),
    (
        "lb_config_not_object",
        lb({"round_robin": []}),
        "loadBalancingConfig[0].round_robin: must be a JSON object",
    ),
    (
        "lb_policy_unknown",
        {"loadBalancingPolicy": "grpclb"},
        'loadBalancingPolicy: unsupported policy; supported: pick_first, round_robin, least_request_experimental, ring_hash_experimental, least_request, random, ring_hash, maglev (got "grpclb")',  # noqa: E501
    ),
    (
        "least_request_choice_count_1",
        lb({"least_request_experimental": {"choiceCount": 1}}),
        "loadBalancingConfig[0].least_request_experimental.choiceCount: must be at least 2 (got 1)",
    ),
    (
        "ring_hash_min_over_max",
        lb({"ring_hash_experimental": {"minRingSize": 5000}}),
        "ring_hash_experimental.minRingSize: must not exceed maxRingSize (got 5000)",
    ),
    (
        "ring_hash_max_over_cap",
        lb({"ring_hash_experimental": {"maxRingSize": 8388609}}),
        "ring_hash_experimental.maxRingSize: must be at most 8388608",
    ),
    (
        "ring_hash_negative_size",
        lb({"ring_hash_experimental": {"minRingSize": -1}}),
        "ring_hash_experimental.minRingSize: must be an integer of at least 0 (got -1)",
    ),
    (
        "ring_hash_header_not_string",
        lb({"ring_hash_experimental": {"requestHashHeader": 1}}),
        "ring_hash_experimental.requestHashHeader: must be a string",
    ),
    (
        "outlier_child_policy_missing",
        lb({"outlier_detection_experimental": {}}),
        "loadBalancingConfig[0].outlier_detection_experimental.childPolicy: is required",
    ),
    (
        "outlier_child_policy_unsupported",
        lb(
            {
                "outlier_detection_experimental": {
                    "childPolicy": [{"weighted_target_experimental": {}}]
                }
            }
        ),
        "outlier_detection_experimental.childPolicy: no supported policy among weighted_target_experimental",  # noqa: E501
    ),
    (
        "outlier_max_ejection_percent_over_100",
        outlier(maxEjectionPercent=101),
        "outlier_detection_experimental.maxEjectionPercent: must be an integer from 0 to 100 (got 101)",  # noqa: E501
    ),
    (
        "outlier_interval_not_duration",
        outlier(interval=10),
        "outlier_detection_experimental.interval: must be a duration string",
    ),
    (
        "outlier_enforcement_over_100",
        outlier(successRateEjection={"enforcementPercentage": 101}),
        "successRateEjection.enforcementPercentage: must be an integer from 0 to 100",
    ),
    (
        "outlier_threshold_over_100",
        outlier(failurePercentageEjection={"threshold": 101}),
        "failurePercentageEjection.threshold: must be an integer from 0 to 100",
    ),
    (
        "outlier_algorithm_not_object",
        outlier(failurePercentageEjection=[]),
        "failurePercentageEjection: must be a JSON object",
    ),
]


@pytest.mark.parametrize(
    ("config", "fragment"), [c[1:] for c in ERROR_CASES], ids=[c[0] for c in ERROR_CASES]
)
def test_bad_config_names_the_json_path(config: Any, fragment: str) -> None:
    raw = config if isinstance(config, str) else json.dumps(config)
    with pytest.raises(ConfigError) as info:
        parse_service_config(raw)
    assert fragment in str(info.value)
    assert str(info.value).startswith("service_config: ")


def test_where_prefixes_every_message() -> None:
    with pytest.raises(ConfigError, match=r"^channel option grpc\.service_config: methodConfig"):
        parse_service_config({"methodConfig": 5}, where="channel option grpc.service_config")


def test_a_value_that_is_neither_text_nor_dict_is_refused() -> None:
    with pytest.raises(ConfigError, match="expected a JSON string or a dict, got int"):
        parse_service_config(5)  # type: ignore[arg-type]


# --- retry throttling, health check, source ---------------------------------------------


@pytest.mark.parametrize(
    ("throttling", "want"),
    [
        (
            {"maxTokens": 2, "tokenRatio": 1.0},
            RetryThrottling(2.0, 1.0),
        ),  # C core ValidRetryThrottling
        ({"maxTokens": 10, "tokenRatio": 0.1}, RetryThrottling(10.0, 0.1)),
        (
            {"maxTokens": 1000, "tokenRatio": 1.0056},
            RetryThrottling(1000.0, 1.005),
        ),  # 3 decimals kept
        ({"maxTokens": "5", "tokenRatio": "0.5"}, RetryThrottling(5.0, 0.5)),
    ],
)
def test_retry_throttling(throttling: dict[str, Any], want: RetryThrottling) -> None:
    assert parse_service_config({"retryThrottling": throttling}).retry_throttling == want


def test_empty_config_sets_nothing() -> None:
    config = parse_service_config("{}")
    assert config.lb_settings == {}
    assert config.method_config("/a/b") is None
    assert config.retry_throttling is None
    assert config.health_check_service_name is None
    assert config.source == "{}"


def test_health_check_service_name() -> None:
    config = parse_service_config({"healthCheckConfig": {"serviceName": "grpc.health.v1.Health"}})
    assert config.health_check_service_name == "grpc.health.v1.Health"


def test_source_is_normalized_and_defines_equality() -> None:
    a = parse_service_config('{ "loadBalancingPolicy": "round_robin", "methodConfig": [] }')
    b = parse_service_config({"methodConfig": [], "loadBalancingPolicy": "round_robin"})
    assert a.source == b.source == '{"loadBalancingPolicy":"round_robin","methodConfig":[]}'
    assert a == b and hash(a) == hash(b)
    assert repr(a) == f"<ServiceConfig {a.source}>"
    assert isinstance(a, ServiceConfig)


# --- load balancing: (id, config, lb_settings as {setting: value}) -----------------------

LB_CASES: list[tuple[str, Any, dict[str, Any]]] = [
    ("lb_policy_round_robin", {"loadBalancingPolicy": "round_robin"}, {"policy": "round_robin"}),
    ("lb_policy_case_insensitive", {"loadBalancingPolicy": "PICK_FIRST"}, {"policy": "pick_first"}),
    (
        "lb_config_beats_lb_policy",
        {"loadBalancingPolicy": "pick_first", **lb({"round_robin": {}})},
        {"policy": "round_robin"},
    ),
    ("round_robin", lb({"round_robin": {}}), {"policy": "round_robin"}),
    (
        "pick_first_shuffle_ignored",
        lb({"pick_first": {"shuffleAddressList": True}}),
        {"policy": "pick_first"},
    ),
    (
        "first_supported_wins",
        lb({"grpclb": {}}, {"round_robin": {}}, {"pick_first": {}}),
        {"policy": "round_robin"},
    ),
    ("null_config_is_empty", lb({"round_robin": None}), {"policy": "round_robin"}),
    ("least_request_default", lb({"least_request_experimental": {}}), {"policy": "least_request"}),
    (
        "least_request_choice_count",
        lb({"least_request_experimental": {"choiceCount": 3}}),
        {"policy": "least_request", "choice_count": 3},
    ),
    (
        "least_request_choice_count_capped",
        lb({"least_request_experimental": {"choiceCount": 11}}),
        {"policy": "least_request", "choice_count": 10},
    ),
    (
        "ring_hash_header",
        lb(
            {
                "ring_hash_experimental": {
                    "requestHashHeader": "x-user",
                    "minRingSize": 10,
                    "maxRingSize": 100,
                }
            }
        ),
        {"policy": "ring_hash", "hash_key": "x-user"},
    ),
    (
        "ring_hash_no_header",
        lb({"ring_hash_experimental": {}}),
        {"policy": "ring_hash", "hash_key": None},
    ),
    (
        "native_least_request_camel",
        lb({"least_request": {"choiceCount": 4}}),
        {"policy": "least_request", "choice_count": 4},
    ),
    (
        "native_ring_hash_snake",
        lb({"ring_hash": {"hash_key": "k", "ring_points_per_endpoint": 9}}),
        {"policy": "ring_hash", "hash_key": "k", "ring_points_per_endpoint": 9},
    ),
    (
        "native_maglev_camel",
        lb({"maglev": {"hashKey": "k", "maglevTableSize": 251}}),
        {"policy": "maglev", "hash_key": "k", "maglev_table_size": 251},
    ),
    ("native_random", lb({"random": {}}), {"policy": "random"}),
    (
        "outlier_minimal",
        outlier(),
        {
            "policy": "round_robin",
            "success_rate_ejection": False,
            "failure_percentage_ejection": False,
        },
    ),
    (
        "outlier_every_a50_field",
        lb(
            {
                "outlier_detection_experimental": {
                    "interval": "1s",
                    "baseEjectionTime": "2s",
                    "maxEjectionTime": "20s",
                    "maxEjectionPercent": 50,
                    "successRateEjection": {
                        "stdevFactor": 1500,
                        "enforcementPercentage": 100,
                        "minimumHosts": 3,
                        "requestVolume": 20,
                    },
                    "failurePercentageEjection": {
                        "threshold": 60,
                        "enforcementPercentage": 100,
                        "minimumHosts": 2,
                        "requestVolume": 10,
                    },
                    "childPolicy": [
                        {"unknown": {}},
                        {"least_request_experimental": {"choiceCount": 3}},
                    ],
                }
            }
        ),
        {
            "policy": "least_request",
            "choice_count": 3,
            "ejection_interval": 1.0,
            "base_ejection_time": 2.0,
            "max_ejection_time": 20.0,
            "max_ejection_percent": 50,
            "success_rate_ejection": True,
            "success_rate_enforcement_percent": 100,
            "success_rate_stdev_factor": 1.5,
            "success_rate_minimum_hosts": 3,
            "success_rate_request_volume": 20,
            "failure_percentage_ejection": True,
            "failure_percentage_enforcement_percent": 100,
            "failure_percentage_threshold": 60.0,
            "failure_percentage_minimum_hosts": 2,
            "failure_percentage_request_volume": 10,
        },
    ),
    (
        "outlier_enforcement_0_disables",
        outlier(successRateEjection={"enforcementPercentage": 0}),
        {
            "policy": "round_robin",
            "success_rate_ejection": False,
            "success_rate_enforcement_percent": 0,
            "failure_percentage_ejection": False,
        },
    ),
    (
        "outlier_enforcement_partial",
        outlier(
            successRateEjection={"enforcementPercentage": 50},
            failurePercentageEjection={"enforcementPercentage": 10},
        ),
        {
            "policy": "round_robin",
            "success_rate_ejection": True,
            "success_rate_enforcement_percent": 50,
            "failure_percentage_ejection": True,
            "failure_percentage_enforcement_percent": 10,
        },
    ),
    (
        "outlier_long_base_raises_max",
        outlier(baseEjectionTime="600s"),
        {
            "policy": "round_robin",
            "base_ejection_time": 600.0,
            "max_ejection_time": 600.0,
            "success_rate_ejection": False,
            "failure_percentage_ejection": False,
        },
    ),
]


@pytest.mark.parametrize(
    ("config", "want"), [c[1:] for c in LB_CASES], ids=[c[0] for c in LB_CASES]
)
def test_load_balancing_maps_onto_settings(config: Any, want: dict[str, Any]) -> None:
    got = parse_service_config(config).lb_settings
    assert {name: value for name, (value, _) in got.items()} == want


def test_lb_settings_remember_their_json_path() -> None:
    got = parse_service_config(
        lb({"grpclb": {}}, {"least_request_experimental": {"choiceCount": 3}})
    )
    assert got.lb_settings["choice_count"] == (
        3,
        "loadBalancingConfig[1].least_request_experimental.choiceCount",
    )
    assert got.lb_settings["policy"] == (
        "least_request",
        "loadBalancingConfig[1].least_request_experimental",
    )


def test_every_grpclb_policy_is_a_load_balancing_config_key() -> None:
    assert tuple(NATIVE_POLICY_FIELDS) == POLICIES
    assert set(POLICIES) <= set(SUPPORTED_POLICIES)


def test_remembered_answers_are_bounded_and_stay_right() -> None:
    config = parse_service_config({"methodConfig": [{"name": [{"service": "s"}], "timeout": "1s"}]})
    for i in range(5000):
        assert config.method_config(f"/s/m{i}") == MethodConfig(timeout=1.0)
        assert config.method_config(f"/other/m{i}") is None
    assert len(config._memo) == 4096
    assert config.method_config("/s/m4999") == MethodConfig(timeout=1.0)


def test_pod_channels_get_the_message_size_limits_alone() -> None:
    config = parse_service_config(
        {
            "loadBalancingConfig": [{"round_robin": {}}],
            "methodConfig": [
                {
                    "name": [{"service": "foo", "method": "Bar"}, {"service": "baz"}],
                    "timeout": "1s",
                    "maxRequestMessageBytes": 10,
                    "retryPolicy": {
                        "maxAttempts": 2,
                        "initialBackoff": "1s",
                        "maxBackoff": "1s",
                        "backoffMultiplier": 1,
                        "retryableStatusCodes": ["UNAVAILABLE"],
                    },
                },
                {"name": [{}], "maxResponseMessageBytes": 20},
                {"name": [{"service": "other"}], "waitForReady": True},
            ],
        }
    )
    assert json.loads(config.pod_channel_config() or "") == {
        "methodConfig": [
            {"name": [{"service": "foo", "method": "Bar"}], "maxRequestMessageBytes": 10},
            {"name": [{"service": "baz"}], "maxRequestMessageBytes": 10},
            {"name": [{"service": ""}], "maxResponseMessageBytes": 20},
        ]
    }
    assert parse_service_config({"methodConfig": [{"name": [{}]}]}).pod_channel_config() is None
