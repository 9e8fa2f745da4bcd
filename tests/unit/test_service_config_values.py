"""Service config values read as gRPC reads them: strict JSON, proto types, names, durations.

Cases from gRPC's own tests (C core ``service_config_test.cc`` and
``retry_service_config_test.cc``, grpc-go ``service_config_test.go`` and
``internal/serviceconfig/duration_test.go``, grpc-java
``ManagedChannelServiceConfigTest``): what they refuse, grpclb refuses with a
``ConfigError`` naming the JSON path; what they accept, grpclb accepts.
"""

from __future__ import annotations

import json
from typing import Any

import grpc
import pytest

from grpclb.config.service_config import (
    HedgingPolicy,
    RetryPolicy,
    RetryThrottling,
    parse_service_config,
)
from grpclb.errors import ConfigError

C = grpc.StatusCode
NAME = {"service": "pkg.Svc", "method": "Call"}
METHOD = "/pkg.Svc/Call"


def retry_policy(**changes: Any) -> dict[str, Any]:
    """A valid retryPolicy with some fields changed (None removes one)."""
    policy: dict[str, Any] = {
        "maxAttempts": 2,
        "initialBackoff": "1s",
        "maxBackoff": "1s",
        "backoffMultiplier": 2,
        "retryableStatusCodes": ["UNAVAILABLE"],
    }
    policy.update(changes)
    return {k: v for k, v in policy.items() if v is not None}


def with_retry(**changes: Any) -> dict[str, Any]:
    return {"methodConfig": [{"name": [NAME], "retryPolicy": retry_policy(**changes)}]}


def retry_of(config: Any) -> RetryPolicy | None:
    found = parse_service_config(config).method_config(METHOD)
    assert found is not None
    return found.retry_policy


def refused(config: Any, fragment: str) -> str:
    """The error a config raises; it must contain ``fragment``."""
    with pytest.raises(ConfigError) as info:
        parse_service_config(config)
    message = str(info.value)
    assert fragment in message, message
    return message


# --- the JSON text --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        (
            '{"healthCheckConfig": {"serviceName": "a"}, "healthCheckConfig": {}}',
            "service_config: healthCheckConfig: duplicate key",
        ),
        ('{"methodConfig": [], "methodConfig": []}', "service_config: methodConfig: duplicate key"),
        (
            '{"methodConfig": [{"name": [{"service": "a", "service": "b"}]}]}',
            "service_config: methodConfig[0].name[0].service: duplicate key",
        ),
        ('{"unknownField": {"x": 1, "x": 2}}', "service_config: unknownField.x: duplicate key"),
    ],
)
def test_duplicate_keys_are_refused(text: str, fragment: str) -> None:
    message = refused(text, fragment)
    assert "a JSON object may give each key once" in message


@pytest.mark.parametrize("token", ["NaN", "Infinity", "-Infinity"])
def test_non_finite_tokens_are_refused(token: str) -> None:
    policy = json.dumps(retry_policy(backoffMultiplier="TOKEN")).replace('"TOKEN"', token)
    text = f'{{"methodConfig": [{{"name": [{{"service": "a"}}], "retryPolicy": {policy}}}]}}'
    refused(
        text,
        f"service_config: methodConfig[0].retryPolicy.backoffMultiplier: {token} is not JSON; "
        "numbers must be finite",
    )
    refused(f'{{"retryThrottling": {{"maxTokens": {token}, "tokenRatio": 1}}}}', "maxTokens")


def test_a_number_too_large_for_a_float_is_refused() -> None:
    text = json.dumps(with_retry()).replace('"backoffMultiplier": 2', '"backoffMultiplier": 1e400')
    refused(text, "retryPolicy.backoffMultiplier: must be a finite number")


@pytest.mark.parametrize("text", ["nan", "NaN", "inf", "-inf", "Infinity", "infinity"])
@pytest.mark.parametrize(
    ("field", "config"),
    [
        ("retryPolicy.backoffMultiplier", lambda v: with_retry(backoffMultiplier=v)),
        ("retryPolicy.maxAttempts", lambda v: with_retry(maxAttempts=v)),
        (
            "retryThrottling.tokenRatio",
            lambda v: {"retryThrottling": {"maxTokens": 1, "tokenRatio": v}},
        ),
        (
            "retryThrottling.maxTokens",
            lambda v: {"retryThrottling": {"maxTokens": v, "tokenRatio": 1}},
        ),
        (
            "least_request_experimental.choiceCount",
            lambda v: {"loadBalancingConfig": [{"least_request_experimental": {"choiceCount": v}}]},
        ),
    ],
)
def test_non_finite_numbers_given_as_strings_are_refused(
    field: str, config: Any, text: str
) -> None:
    refused(config(text), f"{field}: must be a number (got {json.dumps(text)})")


@pytest.mark.parametrize(
    "text", ["1_0", "\uff13", "\u0662", "1.\uff15", "0x10", "1e", "--2", ""]
)  # \uff13: fullwidth 3, \u0662: Arabic-Indic 2
def test_numbers_given_as_strings_must_be_ascii_json_numbers(text: str) -> None:
    refused(with_retry(maxAttempts=text), "retryPolicy.maxAttempts: must be a number")
    refused(with_retry(backoffMultiplier=text), "retryPolicy.backoffMultiplier: must be a number")


@pytest.mark.parametrize(("text", "attempts"), [("4", 4), (" 3 ", 3), ("2.0", 2), ("1e1", 5)])
def test_numbers_given_as_strings_are_read_as_json_numbers(text: str, attempts: int) -> None:
    policy = retry_of(with_retry(maxAttempts=text, backoffMultiplier="+1.5"))
    assert policy is not None
    assert (policy.max_attempts, policy.backoff_multiplier) == (attempts, 1.5)


# --- method names ---------------------------------------------------------------------


@pytest.mark.parametrize("value", [False, 0, [], {}, True, 1])
@pytest.mark.parametrize("key", ["service", "method"])
def test_name_service_and_method_must_be_strings(key: str, value: object) -> None:
    name = {"service": "a", key: value}
    refused(
        {"methodConfig": [{"name": [name], "timeout": "1s"}]},
        f"methodConfig[0].name[0].{key}: must be a string (got {json.dumps(value)})",
    )


def test_a_null_service_or_method_is_absent() -> None:
    config = parse_service_config(
        {"methodConfig": [{"name": [{"service": "a", "method": None}], "timeout": "1s"}]}
    )
    assert list(config.method_configs) == [("a", "")]
    default = parse_service_config({"methodConfig": [{"name": [{"service": None}]}]})
    assert list(default.method_configs) == [("", "")]


# --- durations (grpc-go internal/serviceconfig/duration_test.go, C core) ---------------


def timeout_of(text: str) -> float | None:
    found = parse_service_config(
        {"methodConfig": [{"name": [NAME], "timeout": text}]}
    ).method_config(METHOD)
    assert found is not None
    return found.timeout


@pytest.mark.parametrize("text", ["\uff11s", "1.\uff15s", "\u0662s", "1.\u0662s"])
def test_durations_take_ascii_digits_only(text: str) -> None:
    refused(
        {"methodConfig": [{"name": [NAME], "timeout": text}]},
        'methodConfig[0].timeout: must be a duration string such as "0.1s" or "1.5s"',
    )


@pytest.mark.parametrize(("text", "seconds"), [("+1.5s", 1.5), ("+.5s", 0.5), ("+0s", 0.0)])
def test_durations_may_have_a_plus_sign(text: str, seconds: float) -> None:
    assert timeout_of(text) == seconds


@pytest.mark.parametrize("text", ["+s", "+-1s", "-+1s", "++1s"])
def test_a_sign_alone_or_twice_is_not_a_duration(text: str) -> None:
    refused({"methodConfig": [{"name": [NAME], "timeout": text}]}, "must be a duration string")


def test_the_duration_range_is_on_whole_seconds() -> None:
    assert timeout_of("315576000000.5s") == 315576000000.5
    assert timeout_of("315576000000.999999999s") == pytest.approx(315576000001.0)
    refused(
        {"methodConfig": [{"name": [NAME], "timeout": "315576000001s"}]},
        'timeout: must be at most 315576000000.999999999s (got "315576000001s")',
    )


@pytest.mark.parametrize("text", ["-1s", "-.001s", "-315576000001s", "-0.5s"])
def test_negative_durations_stay_refused(text: str) -> None:
    refused({"methodConfig": [{"name": [NAME], "timeout": text}]}, "timeout: must not be negative")


# --- status codes ---------------------------------------------------------------------


@pytest.mark.parametrize("name", ["unavailable", "Unavailable", "UNAVAILABLe"])
def test_status_code_names_are_upper_case(name: str) -> None:
    message = refused(
        with_retry(retryableStatusCodes=["INTERNAL", name]),
        "retryPolicy.retryableStatusCodes[1]: must be a status code name (OK, CANCELLED",
    )
    assert message.endswith(f"or 0-16; status code names are upper case (got {json.dumps(name)})")
    hedged = {"methodConfig": [{"name": [NAME], "hedgingPolicy": {"maxAttempts": 2}}]}
    hedged["methodConfig"][0]["hedgingPolicy"]["nonFatalStatusCodes"] = [name]
    refused(hedged, "hedgingPolicy.nonFatalStatusCodes[0]: must be a status code name")


def test_a_name_that_is_no_code_in_any_case_gets_no_case_hint() -> None:
    dotless_i = "\u0131NTERNAL"  # upper-cases to INTERNAL, yet is not ASCII
    message = refused(with_retry(retryableStatusCodes=[dotless_i]), "must be a status code name")
    assert "upper case" not in message


def test_status_codes_by_upper_case_name_or_number() -> None:
    policy = retry_of(with_retry(retryableStatusCodes=["UNAVAILABLE", 13]))
    assert policy is not None
    assert policy.retryable_status_codes == {C.UNAVAILABLE, C.INTERNAL}


# --- uint32 fields: refused beyond the type, capped within it -------------------------


@pytest.mark.parametrize(
    ("path", "config"),
    [
        ("retryPolicy.maxAttempts", lambda v: with_retry(maxAttempts=v)),
        (
            "hedgingPolicy.maxAttempts",
            lambda v: {"methodConfig": [{"name": [NAME], "hedgingPolicy": {"maxAttempts": v}}]},
        ),
        (
            "least_request_experimental.choiceCount",
            lambda v: {"loadBalancingConfig": [{"least_request_experimental": {"choiceCount": v}}]},
        ),
        (
            "methodConfig[0].maxResponseMessageBytes",
            lambda v: {"methodConfig": [{"name": [NAME], "maxResponseMessageBytes": v}]},
        ),
        (
            "successRateEjection.requestVolume",
            lambda v: {
                "loadBalancingConfig": [
                    {
                        "outlier_detection_experimental": {
                            "childPolicy": [{"round_robin": {}}],
                            "successRateEjection": {"requestVolume": v},
                        }
                    }
                ]
            },
        ),
        (
            "failurePercentageEjection.minimumHosts",
            lambda v: {
                "loadBalancingConfig": [
                    {
                        "outlier_detection_experimental": {
                            "childPolicy": [{"round_robin": {}}],
                            "failurePercentageEjection": {"minimumHosts": v},
                        }
                    }
                ]
            },
        ),
        (
            "successRateEjection.stdevFactor",
            lambda v: {
                "loadBalancingConfig": [
                    {
                        "outlier_detection_experimental": {
                            "childPolicy": [{"round_robin": {}}],
                            "successRateEjection": {"stdevFactor": v},
                        }
                    }
                ]
            },
        ),
    ],
)
@pytest.mark.parametrize("value", [4294967296, 4294967297, "4294967297", 2**64, 1e30, "1e999999"])
def test_uint32_fields_refuse_values_beyond_their_range(
    path: str, config: Any, value: object
) -> None:
    refused(config(value), f"{path}: must be at most 4294967295 (got {json.dumps(value)})")
    parse_service_config(config(4294967295))  # the largest uint32 is accepted


def test_in_range_values_above_grpc_caps_are_capped() -> None:
    assert retry_of(with_retry(maxAttempts=4294967295)) == RetryPolicy(
        5, 1.0, 1.0, 2.0, frozenset({C.UNAVAILABLE})
    )
    hedged = {"methodConfig": [{"name": [NAME], "hedgingPolicy": {"maxAttempts": 4294967295}}]}
    found = parse_service_config(hedged).method_config(METHOD)
    assert found is not None
    assert found.hedging_policy == HedgingPolicy(5, 0.0, frozenset())
    least = {"loadBalancingConfig": [{"least_request_experimental": {"choiceCount": 4294967295}}]}
    assert parse_service_config(least).lb_settings["choice_count"][0] == 10


# --- retries on perAttemptRecvTimeout alone (gRFC A6, C core, Java) --------------------


@pytest.mark.parametrize("codes", [None, []])
def test_a_retry_policy_with_per_attempt_recv_timeout_may_omit_status_codes(
    codes: list[str] | None,
) -> None:
    policy = retry_of(with_retry(retryableStatusCodes=codes, perAttemptRecvTimeout="1s"))
    assert policy == RetryPolicy(2, 1.0, 1.0, 2.0, frozenset(), per_attempt_recv_timeout=1.0)


def test_without_per_attempt_recv_timeout_status_codes_are_still_required() -> None:
    refused(
        with_retry(retryableStatusCodes=None),
        "retryPolicy.retryableStatusCodes: is required unless perAttemptRecvTimeout is set",
    )
    refused(
        with_retry(retryableStatusCodes=[]),
        "retryableStatusCodes: must not be empty unless perAttemptRecvTimeout is set (got [])",
    )


def test_retry_throttling_reads_numbers_given_as_strings() -> None:
    throttling = {"retryThrottling": {"maxTokens": "10", "tokenRatio": "+0.5"}}
    assert parse_service_config(throttling).retry_throttling == RetryThrottling(10.0, 0.5)
