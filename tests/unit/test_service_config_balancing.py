"""A service config's balancing fields as gRPC accepts them, built into channel settings.

What gRPC accepts must build a channel: ``Settings.load`` turns the mapped values
into grpclb settings, mapping explicitly the few A50 values grpclb's own bounds
cannot hold (docs/service-config.md).
"""

from __future__ import annotations

import random
from collections import Counter
from typing import Any

import pytest

from grpclb.config.service_config import parse_service_config
from grpclb.config.settings import Settings
from grpclb.core.admission import request_hash
from grpclb.core.factory import PickerFactory
from grpclb.core.outlier import OutlierDetector, OutlierRecord
from grpclb.core.pickers import HashPicker
from grpclb.errors import ConfigError

ROUND_ROBIN = [{"round_robin": {}}]
RING_HASH = {"loadBalancingConfig": [{"ring_hash_experimental": {}}]}


def load(service_config: Any, **keywords: object) -> Settings:
    return Settings.load({"service_config": service_config, **keywords}, environ={})


def mapped(config: Any) -> dict[str, Any]:
    return {name: value for name, (value, _) in parse_service_config(config).lb_settings.items()}


def outlier(**config: Any) -> dict[str, Any]:
    return {
        "loadBalancingConfig": [
            {"outlier_detection_experimental": {"childPolicy": ROUND_ROBIN, **config}}
        ]
    }


# --- loadBalancingPolicy --------------------------------------------------------------


def test_load_balancing_policy_beside_load_balancing_config_must_be_a_string() -> None:
    with pytest.raises(ConfigError) as info:
        parse_service_config({"loadBalancingPolicy": 1, "loadBalancingConfig": ROUND_ROBIN})
    assert "loadBalancingPolicy: must be a string (got 1)" in str(info.value)


@pytest.mark.parametrize("name", ["grpclb", "unknown"])
def test_a_policy_name_grpclb_lacks_beside_load_balancing_config_is_not_refused(
    name: str,
) -> None:
    # C core accepts any policy it registers ("grpclb"); grpc-go does not check the name.
    config = {"loadBalancingPolicy": name, "loadBalancingConfig": ROUND_ROBIN}
    assert mapped(config) == {"policy": "round_robin"}


def test_an_unknown_load_balancing_policy_alone_is_refused() -> None:
    with pytest.raises(ConfigError) as info:
        parse_service_config({"loadBalancingPolicy": "unknown"})
    assert "loadBalancingPolicy: unsupported policy; supported: pick_first" in str(info.value)


def test_a_valid_load_balancing_policy_still_yields_to_load_balancing_config() -> None:
    config = {"loadBalancingPolicy": "ring_hash_experimental", "loadBalancingConfig": ROUND_ROBIN}
    assert mapped(config) == {"policy": "round_robin"}


@pytest.mark.parametrize(
    ("name", "want"),
    [
        ("ring_hash_experimental", {"policy": "ring_hash", "hash_key": None}),
        ("RING_HASH_EXPERIMENTAL", {"policy": "ring_hash", "hash_key": None}),
        ("least_request_experimental", {"policy": "least_request"}),
        ("round_robin", {"policy": "round_robin"}),
        ("pick_first", {"policy": "pick_first"}),
    ],
)
def test_load_balancing_policy_takes_grpc_names_with_their_default_configs(
    name: str, want: dict[str, Any]
) -> None:
    assert mapped({"loadBalancingPolicy": name}) == want
    assert load({"loadBalancingPolicy": name}).policy == want["policy"]


def test_load_balancing_policy_cannot_name_a_policy_that_needs_a_config() -> None:
    with pytest.raises(
        ConfigError,
        match=r"loadBalancingPolicy: needs a config; give it in loadBalancingConfig",
    ):
        parse_service_config({"loadBalancingPolicy": "outlier_detection_experimental"})


# --- pick_first -----------------------------------------------------------------------


@pytest.mark.parametrize("value", ["yes", 1, 0, [], {}])
def test_pick_first_shuffle_address_list_must_be_a_boolean(value: object) -> None:
    with pytest.raises(
        ConfigError,
        match=r"loadBalancingConfig\[0\]\.pick_first\.shuffleAddressList: must be true or false",
    ):
        parse_service_config(
            {"loadBalancingConfig": [{"pick_first": {"shuffleAddressList": value}}]}
        )


@pytest.mark.parametrize("value", [True, False, None])
def test_pick_first_takes_a_boolean_or_null_shuffle_address_list(value: object) -> None:
    config = {"loadBalancingConfig": [{"pick_first": {"shuffleAddressList": value}}]}
    assert mapped(config) == {"policy": "pick_first"}


# --- ring_hash_experimental without requestHashHeader (gRFC A76) ----------------------


@pytest.mark.parametrize(
    "config",
    [
        RING_HASH,
        {"loadBalancingConfig": [{"ring_hash_experimental": {"requestHashHeader": ""}}]},
        {"loadBalancingPolicy": "ring_hash_experimental"},
    ],
)
def test_ring_hash_without_a_request_hash_header_builds_a_channel(config: Any) -> None:
    settings = load(config)
    assert (settings.policy, settings.hash_key) == ("ring_hash", None)
    assert settings.origin("hash_key").startswith("service config ")


def test_ring_hash_chosen_outside_the_service_config_still_needs_a_hash_key() -> None:
    with pytest.raises(ConfigError, match=r"^keyword policy='ring_hash' needs hash_key"):
        load(RING_HASH, policy="ring_hash")
    with pytest.raises(ConfigError, match=r"ring_hash='ring_hash' needs hash_key"):
        load({"loadBalancingConfig": [{"ring_hash": {}}]})  # grpclb's own name: its own rule
    assert load(RING_HASH, hash_key="x-user").hash_key == "x-user"


class Pod:
    """What the picker factory needs of an endpoint: its address."""

    def __init__(self, address: str) -> None:
        self.address = address


def test_ring_hash_without_a_header_spreads_calls_at_random() -> None:
    settings = load(RING_HASH)
    pods = [Pod(f"10.0.0.{i}:50051") for i in range(4)]
    factory: PickerFactory[Pod] = PickerFactory(settings, random.Random(5))
    factory.set_members([p.address for p in pods])
    factory.build_table_now()
    picker = factory.build(pods, pods)
    assert isinstance(picker, HashPicker)  # a ring, as ring_hash builds it
    # No metadata key selects the pod: a call carrying any metadata hashes to no point ...
    digest = request_hash([("x-user", "alice"), ("x-request-id", "1")], settings.hash_key)
    assert digest is None
    # ... and goes to a pod at random: the same call is spread over every pod.
    counts = Counter(picker.pick(digest) for _ in range(4000))
    assert set(counts) == set(pods)
    assert all(850 <= c <= 1150 for c in counts.values()), counts


@pytest.mark.parametrize(
    "sizes",
    [
        {"minRingSize": 0},
        {"maxRingSize": 0},
        {"minRingSize": 0, "maxRingSize": 0},
        {"minRingSize": 2000, "maxRingSize": 0},  # 0 is the default 4096, not 0
    ],
)
def test_ring_sizes_of_zero_mean_the_default(sizes: dict[str, int]) -> None:
    config = {"loadBalancingConfig": [{"ring_hash_experimental": sizes}]}
    assert mapped(config) == {"policy": "ring_hash", "hash_key": None}


def test_a_min_ring_size_above_the_default_max_is_still_refused() -> None:
    config = {"loadBalancingConfig": [{"ring_hash_experimental": {"minRingSize": 5000}}]}
    with pytest.raises(ConfigError, match=r"minRingSize: must not exceed maxRingSize"):
        parse_service_config(config)


# --- outlier_detection_experimental values gRPC accepts (gRFC A50) --------------------


def test_outlier_zero_durations_are_mapped_onto_settings() -> None:
    settings = load(outlier(interval="0s", baseEjectionTime="0s", maxEjectionTime="0s"))
    assert settings.ejection_interval == 0.1  # no sweep without a pause: every 100 ms
    assert settings.base_ejection_time == 0.001  # back at the next sweep
    assert settings.max_ejection_time == 0.001


def test_outlier_max_ejection_time_below_base_is_capped_by_base() -> None:
    settings = load(outlier(baseEjectionTime="100s", maxEjectionTime="50s"))
    assert (settings.base_ejection_time, settings.max_ejection_time) == (100.0, 50.0)
    # as C core: an ejection lasts min(base x multiplier, max(base, max))
    detector = OutlierDetector(settings)
    assert detector.ejection_time(OutlierRecord(ejection_multiplier=1)) == 100.0
    assert detector.ejection_time(OutlierRecord(ejection_multiplier=5)) == 100.0
    with pytest.raises(ConfigError, match=r"must be at least base_ejection_time"):
        Settings.load({"base_ejection_time": 100, "max_ejection_time": 50}, environ={})


@pytest.mark.parametrize("algorithm", ["successRateEjection", "failurePercentageEjection"])
def test_outlier_zero_request_volume_and_minimum_hosts_act_as_one(algorithm: str) -> None:
    prefix = "success_rate" if algorithm == "successRateEjection" else "failure_percentage"
    settings = load(outlier(**{algorithm: {"requestVolume": 0, "minimumHosts": 0}}))
    assert getattr(settings, f"{prefix}_request_volume") == 1
    assert getattr(settings, f"{prefix}_minimum_hosts") == 1
    assert settings.origin(f"{prefix}_request_volume").endswith(f"{algorithm}.requestVolume")


def test_outlier_stdev_factor_is_taken_as_given() -> None:
    settings = load(outlier(successRateEjection={"stdevFactor": 4294967295}))
    assert settings.success_rate_stdev_factor == 4294967.295


# --- healthCheckConfig.serviceName (gRFC A17) -----------------------------------------


@pytest.mark.parametrize("name", [" spaced.Service ", "a b", "tab\there", "ünïcode", "\x00"])
def test_health_check_service_name_is_sent_as_given(name: str) -> None:
    settings = load({"healthCheckConfig": {"serviceName": name}})
    assert (settings.health_check, settings.health_check_service_name) == (True, name)


def test_health_check_service_name_keyword_keeps_its_checks() -> None:
    with pytest.raises(ConfigError, match=r"keyword health_check_service_name='a b'"):
        Settings.load({"health_check_service_name": "a b"}, environ={})
    stripped = Settings.load({"health_check_service_name": " x "}, environ={})
    assert stripped.health_check_service_name == "x"
