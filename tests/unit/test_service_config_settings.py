"""The service config among the settings: precedence, origins in errors, replace, lifting.

Precedence for a setting the service config maps: keyword, then environment
variable, then the service config, then ``grpc.lb_policy_name``, then default.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from grpclb.config.service_config import parse_service_config
from grpclb.config.settings import Settings
from grpclb.errors import ConfigError
from grpclb.shell import lift_grpc_options, settings_from_options

ROUND_ROBIN = json.dumps({"loadBalancingConfig": [{"round_robin": {}}]})
LEAST_3 = {"loadBalancingConfig": [{"least_request_experimental": {"choiceCount": 3}}]}


def load(overrides: dict[str, Any] | None = None, **environ: str) -> Settings:
    return Settings.load(overrides or {}, environ=environ)


# --- precedence ------------------------------------------------------------------------


def test_service_config_beats_default() -> None:
    settings = load({"service_config": LEAST_3})
    assert (settings.policy, settings.choice_count) == ("least_request", 3)
    assert settings.origin("choice_count") == (
        "service config loadBalancingConfig[0].least_request_experimental.choiceCount"
    )
    assert settings.origin("retries") == "default"


def test_environment_beats_service_config() -> None:
    settings = load({"service_config": ROUND_ROBIN}, GRPCLB_POLICY="random")
    assert settings.policy == "random"


def test_keyword_beats_environment_and_service_config() -> None:
    settings = load({"service_config": ROUND_ROBIN, "policy": "pick_first"}, GRPCLB_POLICY="random")
    assert settings.policy == "pick_first"


def test_service_config_from_the_environment() -> None:
    settings = load(GRPCLB_SERVICE_CONFIG=ROUND_ROBIN)
    assert settings.policy == "round_robin"
    assert settings.service_config == parse_service_config(ROUND_ROBIN)


def test_keyword_service_config_beats_the_environment_one() -> None:
    settings = load({"service_config": LEAST_3}, GRPCLB_SERVICE_CONFIG=ROUND_ROBIN)
    assert settings.policy == "least_request"


def test_lb_policy_option_is_below_service_config() -> None:
    fallbacks = {"policy": ("pick_first", "channel option grpc.lb_policy_name")}
    assert Settings.load({}, {}, fallbacks).policy == "pick_first"
    assert Settings.load({"service_config": ROUND_ROBIN}, {}, fallbacks).policy == "round_robin"


def test_off_service_config_is_none() -> None:
    assert load({"service_config": None}).service_config is None
    assert load(GRPCLB_SERVICE_CONFIG="off").service_config is None


# --- errors say where a value came from ------------------------------------------------


def test_grpclb_bound_error_names_the_json_path() -> None:
    config = {"loadBalancingConfig": [{"least_request": {"choiceCount": 1}}]}
    with pytest.raises(ConfigError) as info:
        load({"service_config": config})
    assert str(info.value) == (
        "service config loadBalancingConfig[0].least_request.choiceCount=1 is invalid: "
        "must be at least 2"
    )


def test_spec_error_names_the_variable_and_the_path() -> None:
    bad = json.dumps({"methodConfig": [{"name": [{}], "retryPolicy": {"maxAttempts": 1}}]})
    with pytest.raises(ConfigError) as info:
        load(GRPCLB_SERVICE_CONFIG=bad)
    assert str(info.value) == (
        "environment variable GRPCLB_SERVICE_CONFIG: methodConfig[0].retryPolicy.maxAttempts: "
        "must be an integer greater than 1 (got 1)"
    )


def test_combination_error_names_the_service_config_path() -> None:
    with pytest.raises(
        ConfigError,
        match=r"^service config loadBalancingConfig\[0\]\.ring_hash='ring_hash' needs hash_key",
    ):
        load({"service_config": {"loadBalancingConfig": [{"ring_hash": {}}]}})


def test_stdev_factor_above_the_keyword_bound_is_taken_as_given() -> None:
    config = {
        "loadBalancingConfig": [
            {
                "outlier_detection_experimental": {
                    "successRateEjection": {"stdevFactor": 200000},
                    "childPolicy": [{"round_robin": {}}],
                }
            }
        ]
    }
    assert load({"service_config": config}).success_rate_stdev_factor == 200.0
    with pytest.raises(ConfigError, match=r"keyword success_rate_stdev_factor=200"):
        load({"success_rate_stdev_factor": 200})


# --- replace ---------------------------------------------------------------------------


def test_replace_keeps_service_config_values_and_their_origin() -> None:
    settings = load({"service_config": LEAST_3, "retries": 1})
    changed = settings.replace(retries=3)
    assert (changed.choice_count, changed.retries) == (3, 3)
    assert changed.origin("choice_count") == settings.origin("choice_count")
    assert changed.service_config == settings.service_config


def test_replace_of_the_service_config_derives_its_values_again() -> None:
    settings = load({"service_config": LEAST_3})
    assert settings.replace(service_config=ROUND_ROBIN).policy == "round_robin"
    cleared = settings.replace(service_config=None)
    assert (cleared.policy, cleared.choice_count) == ("least_request", 2)


def test_replace_keeps_a_keyword_over_a_new_service_config() -> None:
    settings = load({"policy": "random"})
    assert settings.replace(service_config=ROUND_ROBIN).policy == "random"


def test_replace_on_settings_built_directly_keeps_every_field() -> None:
    assert Settings(policy="random").replace(retries=1).policy == "random"


# --- lifting grpcio options ------------------------------------------------------------


def test_service_config_option_is_lifted_out_of_pod_options() -> None:
    options = [("grpc.service_config", ROUND_ROBIN), ("grpc.enable_retries", 1), ("x", 2)]
    pod_options, overrides, fallbacks = lift_grpc_options(options, {"retries": 1})
    assert pod_options == [("grpc.enable_retries", 1), ("x", 2)]
    assert overrides == {"retries": 1, "service_config": parse_service_config(ROUND_ROBIN)}
    assert fallbacks == {}


def test_lb_policy_name_option_becomes_the_lowest_policy() -> None:
    options = [("grpc.lb_policy_name", "round_robin")]
    settings, pod_options = settings_from_options(options, {}, environ={})
    assert (settings.policy, pod_options) == ("round_robin", [])
    assert settings.origin("policy") == "channel option grpc.lb_policy_name"
    settings, _ = settings_from_options(options, {}, environ={"GRPCLB_POLICY": "random"})
    assert settings.policy == "random"


def test_retry_buffer_size_option_becomes_the_lowest_retry_buffer_bytes() -> None:
    options = [("grpc.per_rpc_retry_buffer_size", 1024), ("x", 2)]
    settings, pod_options = settings_from_options(options, {}, environ={})
    assert (settings.retry_buffer_bytes, pod_options[:1]) == (1024, [("x", 2)])
    assert settings.origin("retry_buffer_bytes") == "channel option grpc.per_rpc_retry_buffer_size"
    settings, _ = settings_from_options(options, {"retry_buffer_bytes": 10}, environ={})
    assert settings.retry_buffer_bytes == 10
    with pytest.raises(ConfigError, match=r"grpc\.per_rpc_retry_buffer_size"):
        settings_from_options([("grpc.per_rpc_retry_buffer_size", -5)], {}, environ={})


def test_bad_lb_policy_name_option_names_the_option() -> None:
    with pytest.raises(
        ConfigError, match=r"^channel option grpc\.lb_policy_name='grpclb' is invalid"
    ):
        settings_from_options([("grpc.lb_policy_name", "grpclb")], {}, environ={})


def test_option_behaves_like_the_keyword() -> None:
    by_option, _ = settings_from_options([("grpc.service_config", ROUND_ROBIN)], {}, environ={})
    by_keyword, _ = settings_from_options([], {"service_config": ROUND_ROBIN}, environ={})
    assert by_option == by_keyword


def test_option_and_keyword_together_are_refused() -> None:
    with pytest.raises(ConfigError, match=r"given twice.*keyword service_config"):
        lift_grpc_options([("grpc.service_config", "{}")], {"service_config": "{}"})
    with pytest.raises(ConfigError, match=r"given twice.*again"):
        lift_grpc_options([("grpc.service_config", "{}")] * 2, {})


def test_bad_option_names_the_option_and_the_path() -> None:
    with pytest.raises(
        ConfigError, match=r"^channel option grpc\.service_config: methodConfig: must"
    ):
        lift_grpc_options([("grpc.service_config", '{"methodConfig": 1}')], {})
