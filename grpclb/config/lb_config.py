"""A service config's balancing fields mapped onto grpclb settings.

``loadBalancingConfig`` is a list of single-key objects, tried in order: the
first policy grpclb supports wins and the rest are ignored (as gRPC skips
policies it does not know). gRPC's policy names map onto grpclb's policies and
settings; grpclb's own policy names are accepted too, with their settings as
fields in camelCase or snake_case. The values are checked here against the
specs (A42, A48, A50, A76); grpclb's own bounds are checked by ``Settings.load``,
which names the JSON path a bad value came from.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from grpclb.config.proto_json import UINT32_MAX, Reader

LbSettings = dict[str, tuple[Any, str]]

# grpclb's own policies, and the settings each reads from its config object.
NATIVE_POLICY_FIELDS: dict[str, tuple[str, ...]] = {
    "round_robin": (),
    "least_request": ("choice_count",),
    "random": (),
    "pick_first": (),
    "ring_hash": ("hash_key", "ring_points_per_endpoint"),
    "maglev": ("hash_key", "maglev_table_size"),
}
GRPC_POLICIES = (
    "pick_first",
    "round_robin",
    "least_request_experimental",
    "ring_hash_experimental",
    "outlier_detection_experimental",
)
SUPPORTED_POLICIES = GRPC_POLICIES + tuple(
    name for name in NATIVE_POLICY_FIELDS if name not in GRPC_POLICIES
)
# loadBalancingPolicy names a policy without a config, so only those whose defaults work
# (C core refuses one that needs a config, as outlier_detection_experimental does).
BY_NAME_POLICIES = tuple(p for p in SUPPORTED_POLICIES if p != "outlier_detection_experimental")
_RING_SIZE_CAP = 8_388_608  # gRFC A42: ring sizes are capped at 8M (8,388,608)
_CHOICE_COUNT_CAP = 10  # gRFC A48: a choice_count above 10 is treated as 10
# A50 durations of "0s", which grpclb's settings (> 0) cannot hold, mapped explicitly
# (docs/service-config.md):
_ZERO_INTERVAL = 0.1  # "0s" would sweep without a pause; grpclb sweeps every 100 ms
_ZERO_EJECTION = 0.001  # 1 ms: an ejected pod is back at the next sweep


def parse_lb_settings(read: Reader, top: Mapping[str, Any]) -> LbSettings:
    """The grpclb settings a service config's balancing fields ask for."""
    by_name = top.get("loadBalancingPolicy")
    if top.get("loadBalancingConfig") is not None:
        # service_config.md: loadBalancingConfig, when present, wins over loadBalancingPolicy.
        # The unused name must still be a string; which names pass depends on the policies
        # a gRPC build registers (C core: "grpclb" is one), so none is refused here.
        if by_name is not None:
            read.string("loadBalancingPolicy", by_name)
        return _lb_config_list(read, "loadBalancingConfig", top["loadBalancingConfig"])
    return {} if by_name is None else _lb_policy(read, by_name)


def _lb_policy(read: Reader, raw: object) -> LbSettings:
    """The deprecated ``loadBalancingPolicy``: a policy name, with its default config."""
    text = read.string("loadBalancingPolicy", raw)
    name = text.strip().lower()  # gRPC compares this deprecated field case-insensitively
    if name == "outlier_detection_experimental":
        read.fail("loadBalancingPolicy", "needs a config; give it in loadBalancingConfig", raw)
    if name not in BY_NAME_POLICIES:
        allowed = ", ".join(BY_NAME_POLICIES)
        read.fail("loadBalancingPolicy", f"unsupported policy; supported: {allowed}", raw)
    return _policy(read, "loadBalancingPolicy", name, {})


def _lb_config_list(read: Reader, path: str, raw: object) -> LbSettings:
    entries = read.array(path, raw)
    for i, entry in enumerate(entries):
        item = read.mapping(f"{path}[{i}]", entry)
        if len(item) != 1:
            read.fail(f"{path}[{i}]", "must hold exactly one policy name", item)
        ((name, config),) = item.items()
        if name in SUPPORTED_POLICIES:
            where = f"{path}[{i}].{name}"
            return _policy(read, where, name, read.mapping(where, {} if config is None else config))
    names = sorted(next(iter(e)) for e in entries if isinstance(e, dict) and len(e) == 1)
    read.fail(
        path,
        f"no supported policy among {', '.join(names) or 'none'}; "
        f"supported: {', '.join(SUPPORTED_POLICIES)}",
        show=False,
    )


def _policy(read: Reader, where: str, name: str, config: Mapping[str, Any]) -> LbSettings:
    if name == "least_request_experimental":
        found: LbSettings = {"policy": ("least_request", where)}
        if config.get("choiceCount") is not None:
            count = read.integer(f"{where}.choiceCount", config["choiceCount"], 0, UINT32_MAX)
            if count < 2:
                # "If choice_count < 2, the config will be rejected." - gRFC A48
                read.fail(f"{where}.choiceCount", "must be at least 2", config["choiceCount"])
            found["choice_count"] = (min(count, _CHOICE_COUNT_CAP), f"{where}.choiceCount")
        return found
    if name == "ring_hash_experimental":
        return _ring_hash(read, where, config)
    if name == "outlier_detection_experimental":
        return _outlier_detection(read, where, config)
    if name == "pick_first" and config.get("shuffleAddressList") is not None:
        # gRFC A62; validated, then not applied (docs/service-config.md)
        read.boolean(f"{where}.shuffleAddressList", config["shuffleAddressList"])
    found = {"policy": (name, where)}
    for setting in NATIVE_POLICY_FIELDS.get(name, ()):
        for key in (setting, _camel(setting)):
            if config.get(key) is not None:
                found[setting] = (config[key], f"{where}.{key}")
    return found


def _ring_hash(read: Reader, where: str, config: Mapping[str, Any]) -> LbSettings:
    """gRFC A42 ring_hash_experimental; A76 adds requestHashHeader."""
    found: LbSettings = {"policy": ("ring_hash", where)}
    sizes = {}
    for key, default in (("minRingSize", 1024), ("maxRingSize", 4096)):
        sizes[key] = default
        if config.get(key) is not None:
            # Validated as A42 says, then not applied: grpclb gives each pod a fixed number
            # of points (ring_points_per_endpoint), so a pod joining moves only its keys.
            # 0 is the default, as in grpc-go.
            sizes[key] = read.integer(f"{where}.{key}", config[key], 0, _RING_SIZE_CAP) or default
    if sizes["minRingSize"] > sizes["maxRingSize"]:
        read.fail(f"{where}.minRingSize", "must not exceed maxRingSize", sizes["minRingSize"])
    header = ""
    if config.get("requestHashHeader") is not None:
        header = read.string(f"{where}.requestHashHeader", config["requestHashHeader"])
    if header:
        found["hash_key"] = (header, f"{where}.requestHashHeader")
    else:
        # gRFC A76: without the header (and without xDS) each call gets a random hash.
        # An explicit "no key", so Settings lets this ring_hash go without a hash_key.
        found["hash_key"] = (None, where)
    return found


def _outlier_detection(read: Reader, where: str, config: Mapping[str, Any]) -> LbSettings:
    """gRFC A50 outlier_detection_experimental, with its childPolicy choosing the policy."""
    if config.get("childPolicy") is None:
        read.fail(f"{where}.childPolicy", "is required", show=False)
    found = _lb_config_list(read, f"{where}.childPolicy", config["childPolicy"])
    for key, setting, zero in (
        ("interval", "ejection_interval", _ZERO_INTERVAL),
        ("baseEjectionTime", "base_ejection_time", _ZERO_EJECTION),
        ("maxEjectionTime", "max_ejection_time", _ZERO_EJECTION),
    ):
        if config.get(key) is not None:
            seconds = read.duration(f"{where}.{key}", config[key])
            found[setting] = (seconds or zero, f"{where}.{key}")
    base = found.get("base_ejection_time", (0.0, ""))[0]
    if "max_ejection_time" not in found and base > 300.0:
        # gRFC A50 (as gRPC implements it): maxEjectionTime unset is max(300s, baseEjectionTime)
        found["max_ejection_time"] = (base, f"{where}.baseEjectionTime")
    if config.get("maxEjectionPercent") is not None:
        path = f"{where}.maxEjectionPercent"
        found["max_ejection_percent"] = (read.percent(path, config["maxEjectionPercent"]), path)
    # gRFC A50: an algorithm whose config object is absent does not run
    found.update(_algorithm(read, where, config, "successRateEjection", "success_rate"))
    found.update(_algorithm(read, where, config, "failurePercentageEjection", "failure_percentage"))
    return found


def _algorithm(
    read: Reader, where: str, config: Mapping[str, Any], key: str, prefix: str
) -> LbSettings:
    path = f"{where}.{key}"
    if config.get(key) is None:
        return {f"{prefix}_ejection": (False, path)}
    algorithm = read.mapping(path, config[key])
    found: LbSettings = {f"{prefix}_ejection": (True, path)}
    enforcement = algorithm.get("enforcementPercentage")
    if enforcement is not None:
        where_from = f"{path}.enforcementPercentage"
        percent = read.percent(where_from, enforcement)
        found[f"{prefix}_ejection"] = (percent > 0, where_from)  # 0: the analysis never acts
        found[f"{prefix}_enforcement_percent"] = (percent, where_from)
    for field, setting in (("minimumHosts", "minimum_hosts"), ("requestVolume", "request_volume")):
        if algorithm.get(field) is not None:
            value = read.integer(f"{path}.{field}", algorithm[field], 0, UINT32_MAX)
            # 0 acts as 1: a pod without calls has no rate (C core skips it), and with no
            # pod to analyse there is nothing to eject; grpclb's settings start at 1.
            found[f"{prefix}_{setting}"] = (max(value, 1), f"{path}.{field}")
    if prefix == "success_rate" and algorithm.get("stdevFactor") is not None:
        # gRFC A50 (as Envoy): stdevFactor is in thousandths, 1900 means 1.9
        factor = read.integer(f"{path}.stdevFactor", algorithm["stdevFactor"], 0, UINT32_MAX)
        found["success_rate_stdev_factor"] = (factor / 1000, f"{path}.stdevFactor/1000")
    if prefix == "failure_percentage" and algorithm.get("threshold") is not None:
        threshold = read.percent(f"{path}.threshold", algorithm["threshold"])
        found["failure_percentage_threshold"] = (float(threshold), f"{path}.threshold")
    return found


def _camel(snake: str) -> str:
    return re.sub(r"_([a-z])", lambda m: m.group(1).upper(), snake)
