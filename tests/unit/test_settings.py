"""Settings: the table, precedence, value parsing and every way a value can be bad.

Table-tested in grpc-go's style: each row is (id, input, want) or
(id, input, fragment of the error). ``Settings.load`` is always handed an
explicit ``environ`` except in the one test that checks the real environment,
so the machine's own ``GRPCLB_*`` variables never leak into a result.
"""

from __future__ import annotations

import dataclasses
import logging
import pathlib

import grpc
import pytest

from grpclb.config.parsing import parse_duration
from grpclb.config.service_config import parse_service_config
from grpclb.config.settings import POLICIES, SETTINGS, SETTINGS_BY_NAME, Settings
from grpclb.errors import ConfigError

C = grpc.StatusCode
ALL_NAMES = [s.name for s in SETTINGS]


def load(overrides: dict[str, object] | None = None, **environ: str) -> Settings:
    return Settings.load(overrides or {}, environ=environ)


# --- the table and the dataclass agree ------------------------------------------------


def test_table_and_dataclass_declare_the_same_settings_in_the_same_order() -> None:
    fields = [f.name for f in dataclasses.fields(Settings)]
    assert fields == ALL_NAMES


@pytest.mark.parametrize("setting", SETTINGS, ids=ALL_NAMES)
def test_dataclass_default_equals_table_default(setting: object) -> None:
    field = {f.name: f for f in dataclasses.fields(Settings)}[setting.name]  # type: ignore[attr-defined]
    assert field.default == setting.default  # type: ignore[attr-defined]


@pytest.mark.parametrize("setting", SETTINGS, ids=ALL_NAMES)
def test_loaded_default_equals_table_default(setting: object) -> None:
    name = setting.name  # type: ignore[attr-defined]
    assert getattr(load(), name) == setting.default  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("name", "want"),
    [
        ("policy", "least_request"),
        ("hash_key", None),
        ("choice_count", 2),
        ("maglev_table_size", 65537),
        ("dns_refresh_interval", 5.0),
        ("max_connection_age", None),
        ("max_connection_age_jitter", 0.1),
        ("max_connection_age_grace", None),
        ("max_requests_per_connection", None),
        (
            "failure_codes",
            frozenset({C.UNAVAILABLE, C.DEADLINE_EXCEEDED, C.INTERNAL, C.UNKNOWN, C.DATA_LOSS}),
        ),
        ("consecutive_failures", 5),
        ("ejection_interval", 10.0),
        ("success_rate_ejection", True),
        ("success_rate_enforcement_percent", 100),
        ("success_rate_stdev_factor", 1.9),
        ("success_rate_minimum_hosts", 5),
        ("success_rate_request_volume", 100),
        ("failure_percentage_ejection", False),
        ("failure_percentage_enforcement_percent", 100),
        ("failure_percentage_threshold", 85.0),
        ("failure_percentage_minimum_hosts", 5),
        ("failure_percentage_request_volume", 50),
        ("base_ejection_time", 30.0),
        ("max_ejection_time", 300.0),
        ("max_ejection_percent", 10.0),
        ("panic_threshold", 50.0),
        ("retries", 2),
        ("retry_codes", frozenset({C.UNAVAILABLE})),
        ("retry_backoff_base", 0.025),
        ("retry_backoff_max", 0.25),
        ("retry_buffer_bytes", 262_144),
        ("retry_budget_percent", 20.0),
        ("retry_budget_min_concurrency", 10),
        ("max_requests", None),
        ("health_check", False),
        ("health_check_service_name", ""),
        ("slow_start_window", None),
        ("slow_start_aggression", 1.0),
        ("slow_start_min_weight_percent", 10.0),
    ],
)
def test_defaults_are_the_ones_the_issues_specify(name: str, want: object) -> None:
    assert SETTINGS_BY_NAME[name].default == want


@pytest.mark.parametrize("setting", SETTINGS, ids=ALL_NAMES)
def test_environment_variable_name(setting: object) -> None:
    name = setting.name  # type: ignore[attr-defined]
    assert setting.env == "GRPCLB_" + name.upper()  # type: ignore[attr-defined]


# --- precedence: keyword, then environment, then default ------------------------------

# A valid, non-default value for every setting, as the environment would spell it.
GOOD_ENV: dict[str, tuple[str, object]] = {
    "policy": ("round_robin", "round_robin"),
    "hash_key": ("X-User-Id", "x-user-id"),
    "choice_count": ("3", 3),
    "ring_points_per_endpoint": ("100", 100),
    "maglev_table_size": ("251", 251),
    "dns_refresh_interval": ("250ms", 0.25),
    "dns_min_refresh_interval": ("0.5", 0.5),
    "dns_respect_ttl": ("false", False),
    "dns_timeout": ("1m30s", 90.0),
    "hosts_file": ("/etc/hosts.k8s", "/etc/hosts.k8s"),
    "max_connection_age": ("1m", 60.0),
    "max_connection_age_jitter": ("0.2", 0.2),
    "max_connection_age_grace": ("5s", 5.0),
    "max_requests_per_connection": ("100", 100),
    "failure_codes": ("UNAVAILABLE,internal", frozenset({C.UNAVAILABLE, C.INTERNAL})),
    "consecutive_failures": ("0", 0),
    "ejection_interval": ("1s", 1.0),
    "success_rate_ejection": ("off", False),
    "success_rate_enforcement_percent": ("50", 50),
    "success_rate_stdev_factor": ("1", 1.0),
    "success_rate_minimum_hosts": ("3", 3),
    "success_rate_request_volume": ("10", 10),
    "failure_percentage_ejection": ("yes", True),
    "failure_percentage_enforcement_percent": ("0", 0),
    "failure_percentage_threshold": ("50", 50.0),
    "failure_percentage_minimum_hosts": ("2", 2),
    "failure_percentage_request_volume": ("20", 20),
    "base_ejection_time": ("1m", 60.0),
    "max_ejection_time": ("10m", 600.0),
    "max_ejection_percent": ("50", 50.0),
    "panic_threshold": ("0", 0.0),
    "retries": ("0", 0),
    "retry_codes": (
        "unavailable, resource_exhausted",
        frozenset({C.UNAVAILABLE, C.RESOURCE_EXHAUSTED}),
    ),
    "retry_backoff_base": ("100ms", 0.1),
    "retry_backoff_max": ("1s", 1.0),
    "retry_buffer_bytes": ("1048576", 1_048_576),
    "retry_budget_percent": ("50", 50.0),
    "retry_budget_min_concurrency": ("3", 3),
    "metrics_endpoint_limit": ("20", 20),
    "max_requests": ("1000", 1000),
    "service_config": (
        '{"methodConfig": [{"name": [{}], "timeout": "1.5s"}]}',
        parse_service_config({"methodConfig": [{"name": [{}], "timeout": "1.5s"}]}),
    ),
    "health_check": ("true", True),
    "health_check_service_name": (" my.pkg.Svc ", "my.pkg.Svc"),
    "slow_start_window": ("30s", 30.0),
    "slow_start_aggression": ("2", 2.0),
    "slow_start_min_weight_percent": ("5", 5.0),
    "subset_size": ("20", 20),
    "subset_seed": ("12345", 12345),
    "subset_client_index": ("0", 0),  # 0 is an index, not "off"
}
# What a setting needs beside it to be valid on its own.
COMPANIONS: dict[str, dict[str, str]] = {"subset_client_index": {"GRPCLB_SUBSET_SIZE": "20"}}


def test_good_env_table_covers_every_setting() -> None:
    assert sorted(GOOD_ENV) == sorted(ALL_NAMES)


@pytest.mark.parametrize(
    ("name", "raw", "want"), [(n, *v) for n, v in GOOD_ENV.items()], ids=list(GOOD_ENV)
)
def test_environment_beats_default(name: str, raw: str, want: object) -> None:
    settings = load(**{SETTINGS_BY_NAME[name].env: raw}, **COMPANIONS.get(name, {}))
    assert getattr(settings, name) == want
    assert want != SETTINGS_BY_NAME[name].default


@pytest.mark.parametrize(
    ("name", "raw", "want"), [(n, *v) for n, v in GOOD_ENV.items()], ids=list(GOOD_ENV)
)
def test_keyword_beats_environment(name: str, raw: str, want: object) -> None:
    default = SETTINGS_BY_NAME[name].default
    settings = load(
        {name: default}, **{SETTINGS_BY_NAME[name].env: raw}, **COMPANIONS.get(name, {})
    )
    assert getattr(settings, name) == default


@pytest.mark.parametrize(
    ("name", "raw", "want"), [(n, *v) for n, v in GOOD_ENV.items()], ids=list(GOOD_ENV)
)
def test_keyword_strings_parse_like_the_environment(name: str, raw: str, want: object) -> None:
    assert getattr(load({name: raw}, **COMPANIONS.get(name, {})), name) == want


def test_real_process_environment_is_read_when_no_environ_is_given(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("GRPCLB_POLICY", "random")
    monkeypatch.setenv("GRPCLB_RETRIES", "1")
    settings = Settings.load({"retries": 0})
    assert settings.policy == "random"
    assert settings.retries == 0


def test_bad_environment_is_not_consulted_when_the_keyword_is_given() -> None:
    settings = load({"policy": "random"}, GRPCLB_POLICY="lest_request")
    assert settings.policy == "random"


def test_unrelated_environment_variables_are_ignored() -> None:
    assert load(POLICY="nonsense", GRPCLB_UNKNOWN_THING="x") == load()


# --- durations ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "want"),
    [
        ("250ms", 0.25),
        ("5s", 5.0),
        ("1m", 60.0),
        ("1m30s", 90.0),
        ("1h", 3600.0),
        ("100us", 1e-4),
        ("1.5", 1.5),
        ("1.5s", 1.5),
        (".5s", 0.5),
        (" 5S ", 5.0),
        ("0", 0.0),
        (2, 2.0),
        (0.25, 0.25),
    ],
    ids=lambda v: repr(v),
)
def test_parse_duration(raw: object, want: float) -> None:
    assert parse_duration(raw) == pytest.approx(want)


@pytest.mark.parametrize(
    ("raw", "want"),
    [("250ms", 0.25), ("5s", 5.0), ("1m", 60.0), ("1m30s", 90.0), ("1.5", 1.5), (2, 2.0)],
    ids=lambda v: repr(v),
)
@pytest.mark.parametrize("source", ["keyword", "env"])
def test_duration_setting(source: str, raw: object, want: float) -> None:
    if source == "keyword":
        settings = load({"dns_refresh_interval": raw})
    else:
        settings = load(GRPCLB_DNS_REFRESH_INTERVAL=str(raw))
    assert settings.dns_refresh_interval == pytest.approx(want)


@pytest.mark.parametrize("raw", ["off", "OFF", "none", "disabled", "", None, 0], ids=repr)
@pytest.mark.parametrize("name", ["max_connection_age", "max_connection_age_grace"])
def test_optional_duration_off(name: str, raw: object) -> None:
    assert getattr(load({name: raw}), name) is None


@pytest.mark.parametrize("raw", ["off", "none", ""], ids=repr)
@pytest.mark.parametrize("name", ["max_requests", "max_requests_per_connection"])
def test_optional_integer_off_from_environment(name: str, raw: str) -> None:
    assert getattr(load(**{SETTINGS_BY_NAME[name].env: raw}), name) is None


@pytest.mark.parametrize(
    "name",
    [
        "max_requests",
        "max_requests_per_connection",
        "max_connection_age",
        "max_connection_age_grace",
    ],
)
def test_zero_means_the_same_from_keyword_and_environment(name: str) -> None:
    from_keyword = getattr(load({name: 0}), name)
    from_env = getattr(load(**{SETTINGS_BY_NAME[name].env: "0"}), name)
    assert from_keyword is None
    assert from_env == from_keyword


# --- booleans -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "want"),
    [
        ("1", True),
        ("true", True),
        ("TRUE", True),
        ("yes", True),
        ("on", True),
        (True, True),
        ("0", False),
        ("false", False),
        ("no", False),
        ("off", False),
        (False, False),
    ],
    ids=repr,
)
def test_boolean(raw: object, want: bool) -> None:
    assert load({"dns_respect_ttl": raw}).dns_respect_ttl is want
    assert load(GRPCLB_FAILURE_PERCENTAGE_EJECTION=str(raw)).failure_percentage_ejection is want


# --- status code lists ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "want"),
    [
        ("UNAVAILABLE,internal", {C.UNAVAILABLE, C.INTERNAL}),
        (" unavailable , deadline_exceeded ", {C.UNAVAILABLE, C.DEADLINE_EXCEEDED}),
        ("UNAVAILABLE,", {C.UNAVAILABLE}),
        (["UNAVAILABLE", "not_found"], {C.UNAVAILABLE, C.NOT_FOUND}),
        ((C.UNAVAILABLE, C.ABORTED), {C.UNAVAILABLE, C.ABORTED}),
    ],
    ids=["names", "spaces", "trailing_comma", "list_of_names", "tuple_of_codes"],
)
@pytest.mark.parametrize("name", ["failure_codes", "retry_codes"])
def test_status_codes(name: str, raw: object, want: set[grpc.StatusCode]) -> None:
    assert getattr(load({name: raw}), name) == frozenset(want)


@pytest.mark.parametrize("name", ["failure_codes", "retry_codes"])
def test_unknown_status_code_lists_every_code(name: str) -> None:
    with pytest.raises(ConfigError) as info:
        load(**{SETTINGS_BY_NAME[name].env: "UNAVAILABLE,UNAVAILBLE"})
    message = str(info.value)
    assert SETTINGS_BY_NAME[name].env in message
    assert "UNAVAILBLE" in message
    for code in C:
        assert code.name in message


@pytest.mark.parametrize("raw", ["OK", "ok", "UNAVAILABLE,OK", [C.OK]], ids=repr)
@pytest.mark.parametrize("name", ["failure_codes", "retry_codes"])
def test_ok_is_never_a_failure_or_retry_code(name: str, raw: object) -> None:
    with pytest.raises(ConfigError, match=f"keyword {name}.*OK"):
        load({name: raw})


@pytest.mark.parametrize("raw", [14, None], ids=repr)
@pytest.mark.parametrize("name", ["failure_codes", "retry_codes"])
def test_non_list_status_codes_are_a_config_error(name: str, raw: object) -> None:
    with pytest.raises(ConfigError, match=name):
        load({name: raw})


# --- every bad value ------------------------------------------------------------------

# (setting, raw value): bad whether it comes from a keyword or from the environment.
BAD: list[tuple[str, str]] = [
    ("policy", "lest_request"),
    ("policy", "ROUNDROBIN"),
    ("hash_key", "x user"),
    ("hash_key", "x-id-bin"),
    ("choice_count", "1"),
    ("choice_count", "two"),
    ("choice_count", "2.5"),
    ("ring_points_per_endpoint", "0"),
    ("ring_points_per_endpoint", "8193"),
    ("ring_points_per_endpoint", "100000"),
    ("maglev_table_size", "2"),
    ("maglev_table_size", "big"),
    ("maglev_table_size", "65536"),
    ("maglev_table_size", "100"),
    ("maglev_table_size", "2147483647"),  # prime, and far past Envoy's 5000011
    ("maglev_table_size", "5000087"),
    ("dns_refresh_interval", "5x"),
    ("dns_refresh_interval", "-1"),
    ("dns_refresh_interval", "0"),
    ("dns_refresh_interval", "off"),
    ("dns_refresh_interval", "1m30"),
    ("dns_refresh_interval", "nan"),
    ("dns_refresh_interval", "inf"),
    ("dns_min_refresh_interval", "soon"),
    ("dns_respect_ttl", "maybe"),
    ("dns_respect_ttl", "2"),
    ("dns_timeout", "5 s"),
    ("hosts_file", "etc/hosts"),
    ("max_connection_age", "-5s"),
    ("max_connection_age", "later"),
    ("max_connection_age_jitter", "1.5"),
    ("max_connection_age_jitter", "-0.1"),
    ("max_connection_age_jitter", "lots"),
    ("max_connection_age_grace", "-1"),
    ("max_requests_per_connection", "-1"),
    ("max_requests_per_connection", "ten"),
    ("failure_codes", "UNAVAILBLE"),
    ("failure_codes", "UNAVAILABLE,OK"),
    ("consecutive_failures", "-1"),
    ("consecutive_failures", "five"),
    ("ejection_interval", "0s"),
    ("success_rate_ejection", "perhaps"),
    ("success_rate_enforcement_percent", "101"),
    ("success_rate_enforcement_percent", "12.5"),
    ("success_rate_stdev_factor", "101"),
    ("success_rate_stdev_factor", "x"),
    ("success_rate_minimum_hosts", "0"),
    ("success_rate_request_volume", "0"),
    ("failure_percentage_ejection", "2"),
    ("failure_percentage_enforcement_percent", "-1"),
    ("failure_percentage_threshold", "100.5"),
    ("failure_percentage_minimum_hosts", "0"),
    ("failure_percentage_request_volume", "-3"),
    ("base_ejection_time", "0"),
    ("max_ejection_time", "10"),  # below base_ejection_time (30s)
    ("max_ejection_percent", "110"),
    ("panic_threshold", "-1"),
    ("retries", "11"),
    ("retries", "-1"),
    ("retry_codes", "NOT_A_CODE"),
    ("retry_backoff_base", "fast"),
    ("retry_backoff_max", "0.01"),  # below retry_backoff_base (25ms)
    ("retry_buffer_bytes", "-1"),
    ("retry_budget_percent", "120"),
    ("retry_budget_min_concurrency", "-1"),
    ("metrics_endpoint_limit", "-1"),
    ("metrics_endpoint_limit", "some"),
    ("max_requests", "-1"),
    ("max_requests", "lots"),
    ("service_config", "[]"),
    ("health_check", "maybe"),
    ("health_check_service_name", "my service"),
    ("slow_start_window", "soon"),
    ("slow_start_aggression", "0"),
    ("slow_start_min_weight_percent", "101"),
    ("subset_size", "-2"),
    ("subset_size", "some"),
    ("subset_seed", "-1"),
    ("subset_seed", "lucky"),
    ("subset_client_index", "-1"),
    ("subset_client_index", "3"),  # without subset_size
]
BAD_IDS = [f"{n}={v}" for n, v in BAD]


def test_bad_table_covers_every_setting() -> None:
    assert {n for n, _ in BAD} == set(ALL_NAMES)


@pytest.mark.parametrize(("name", "raw"), BAD, ids=BAD_IDS)
def test_bad_keyword_names_keyword_and_value(name: str, raw: str) -> None:
    with pytest.raises(ConfigError) as info:
        load({name: raw})
    message = str(info.value)
    assert f"keyword {name}" in message
    assert raw in message


@pytest.mark.parametrize(("name", "raw"), BAD, ids=BAD_IDS)
def test_bad_environment_names_variable_and_value(name: str, raw: str) -> None:
    env = SETTINGS_BY_NAME[name].env
    with pytest.raises(ConfigError) as info:
        load(**{env: raw})
    message = str(info.value)
    assert env in message
    assert raw in message


@pytest.mark.parametrize(
    ("name", "raw"),
    [
        ("choice_count", True),
        ("choice_count", 2.5),
        ("choice_count", None),
        ("retries", 1.5),
        ("dns_refresh_interval", True),
        ("dns_refresh_interval", None),
        ("dns_refresh_interval", -0.5),
        ("dns_refresh_interval", float("nan")),
        ("max_connection_age", -1),
        ("max_connection_age_jitter", True),
        ("max_connection_age_jitter", None),
        ("dns_respect_ttl", None),
        ("dns_respect_ttl", 2),
        ("policy", None),
        ("policy", 3),
    ],
    ids=lambda v: repr(v),
)
def test_bad_keyword_types(name: str, raw: object) -> None:
    with pytest.raises(ConfigError) as info:
        load({name: raw})
    message = str(info.value)
    assert f"keyword {name}" in message
    assert repr(raw) in message


def test_config_error_is_a_value_error() -> None:
    assert issubclass(ConfigError, ValueError)
    with pytest.raises(ValueError):
        load({"retries": -1})


# --- choices --------------------------------------------------------------------------


def test_misspelt_policy_in_environment_names_variable_and_lists_policies() -> None:
    with pytest.raises(ConfigError) as info:
        load(GRPCLB_POLICY="lest_request")
    message = str(info.value)
    assert "GRPCLB_POLICY" in message
    assert "lest_request" in message
    for policy in (
        "round_robin",
        "least_request",
        "random",
        "pick_first",
        "ring_hash",
        "maglev",
    ):
        assert policy in message
    assert set(POLICIES) == {
        "round_robin",
        "least_request",
        "random",
        "pick_first",
        "ring_hash",
        "maglev",
    }


@pytest.mark.parametrize("policy", POLICIES)
def test_every_policy_is_accepted_in_any_case(policy: str) -> None:
    settings = load({"policy": policy.upper(), "hash_key": "x-user"})
    assert settings.policy == policy


@pytest.mark.parametrize("policy", ["ring_hash", "maglev"])
@pytest.mark.parametrize("source", ["keyword", "env"])
def test_hash_policy_needs_hash_key(source: str, policy: str) -> None:
    with pytest.raises(ConfigError) as info:
        if source == "keyword":
            load({"policy": policy})
        else:
            load(GRPCLB_POLICY=policy)
    message = str(info.value)
    assert "hash_key" in message
    assert policy in message
    assert ("keyword policy" if source == "keyword" else "GRPCLB_POLICY") in message


@pytest.mark.parametrize("policy", ["ring_hash", "maglev"])
def test_hash_policy_with_hash_key(policy: str) -> None:
    settings = load({"policy": policy}, GRPCLB_HASH_KEY="X-User")
    assert (settings.policy, settings.hash_key) == (policy, "x-user")


@pytest.mark.parametrize("size", [3, 251, 65537, 1_000_003])
def test_prime_maglev_table_size_is_accepted(size: int) -> None:
    assert load({"maglev_table_size": size}).maglev_table_size == size


@pytest.mark.parametrize("size", [4, 65536, 65535, 1_000_000])
def test_non_prime_maglev_table_size_is_rejected(size: int) -> None:
    with pytest.raises(ConfigError, match=rf"keyword maglev_table_size={size}\b.*prime"):
        load({"maglev_table_size": size})


def test_unknown_keyword_lists_known_settings() -> None:
    with pytest.raises(ConfigError) as info:
        load({"polcy": "random"})
    message = str(info.value)
    assert "polcy" in message
    for name in ALL_NAMES:
        assert name in message


def test_combination_error_names_the_default_it_conflicts_with() -> None:
    with pytest.raises(ConfigError, match=r"max_ejection_time.*base_ejection_time \(30s\)"):
        load({"max_ejection_time": 10})
    with pytest.raises(ConfigError, match=r"GRPCLB_RETRY_BACKOFF_MAX.*retry_backoff_base"):
        load(GRPCLB_RETRY_BACKOFF_MAX="10ms")


# --- the value ------------------------------------------------------------------------


def test_settings_are_frozen() -> None:
    settings = load()
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.policy = "random"  # type: ignore[misc]


def test_replace_validates_and_keeps_the_rest() -> None:
    settings = load({"policy": "round_robin", "retries": 1})
    changed = settings.replace(retries=3)
    assert (changed.policy, changed.retries) == ("round_robin", 3)
    assert settings.retries == 1
    with pytest.raises(ConfigError, match="keyword retries"):
        settings.replace(retries=99)


def test_replace_ignores_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GRPCLB_CHOICE_COUNT", "7")
    assert load().replace(retries=1).choice_count == 2


def test_replace_round_trips_every_value() -> None:
    settings = load({name: raw for name, (raw, _) in GOOD_ENV.items()})
    assert settings.replace() == settings


def test_a_misspelled_environment_variable_is_named_in_a_warning(caplog) -> None:
    with caplog.at_level(logging.WARNING, logger="grpclb"):
        settings = Settings.load(environ={"GRPCLB_POLCY": "round_robin"})
    assert settings.policy == "least_request"
    assert any(
        "GRPCLB_POLCY" in r.getMessage() and "GRPCLB_POLICY" in r.getMessage()
        for r in caplog.records
    )


@pytest.mark.parametrize(
    ("name", "limit"),
    [("maglev_table_size", 5_000_011), ("ring_points_per_endpoint", 8192)],
)
def test_hash_table_sizes_are_bounded(name: str, limit: int) -> None:
    """Envoy's Maglev cap, and a ring of 8M entries at 1024 pods: no unbounded tables."""
    assert getattr(Settings.load({name: limit}, environ={}), name) == limit
    with pytest.raises(ConfigError, match=f"at most {limit}"):
        Settings.load({name: limit + 2}, environ={})


@pytest.mark.parametrize(
    ("raw", "want"),
    [("off", None), ("", None), (None, None), (" /etc/hosts ", "/etc/hosts")],
)
def test_hosts_file_may_be_off(raw: object, want: str | None) -> None:
    assert Settings.load({"hosts_file": raw}, environ={}).hosts_file == want


def test_hosts_file_takes_a_path_object() -> None:
    assert Settings.load({"hosts_file": pathlib.Path("/x/hosts")}, environ={}).hosts_file == (
        "/x/hosts"
    )


@pytest.mark.parametrize("raw", [5, "/etc/ho\x00sts"], ids=["int", "nul"])
def test_hosts_file_must_be_a_path(raw: object) -> None:
    with pytest.raises(ConfigError, match="hosts_file"):
        Settings.load({"hosts_file": raw}, environ={})


@pytest.mark.parametrize("policy", ["ring_hash", "maglev"])
def test_subsetting_with_consistent_hashing_is_refused_naming_both(policy: str) -> None:
    with pytest.raises(ConfigError) as info:
        load({"policy": policy, "hash_key": "x-user", "subset_size": 20})
    message = str(info.value)
    assert "keyword subset_size=20" in message and f"keyword policy={policy!r}" in message
    assert "round_robin" in message  # the allowed policies are named


def test_subsetting_is_off_by_default_and_a_seed_of_zero_draws_one() -> None:
    settings = load()
    assert settings.subset_size is None and settings.subset_seed is None
    assert load({"subset_size": 0}).subset_size is None  # 0 is off, as elsewhere
    assert load({"subset_seed": 0}).subset_seed is None
