"""examples/prometheus_exporter.py, scraped over real HTTP on loopback, as Prometheus would."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "prometheus_exporter.py"
METHOD = "grpclb.testing.Echo/Unary"


def load_example():
    spec = importlib.util.spec_from_file_location("prometheus_exporter_example", EXAMPLE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def samples(text: str) -> dict[str, list]:
    """Prometheus sample name -> its samples, from the exposition format."""
    found: dict[str, list] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found.setdefault(sample.name, []).append(sample)
    return found


def test_a_scrape_shows_call_and_attempt_metrics_with_a66_labels(pods):
    example = load_example()
    fleet = pods(3)
    fleet[0].set_mode("not_found")  # not retried: those calls fail with NOT_FOUND
    target = "ipv4:" + ",".join(fleet.addresses)
    with example.metrics_endpoint() as (provider, url):
        assert url.startswith("http://127.0.0.1:")
        failed = example.make_calls(target, provider, 30)
        found = samples(example.scrape(url))

    calls = {
        (s.labels["grpc_method"], s.labels["grpc_status"]): s.value
        for s in found["grpc_client_call_duration_seconds_count"]
    }
    assert calls == {(METHOD, "OK"): 30 - failed, (METHOD, "NOT_FOUND"): failed}
    assert 1 <= failed < 30
    buckets = found["grpc_client_call_duration_seconds_bucket"]
    assert {s.labels["le"] for s in buckets} >= {"0.0", "0.001", "100.0", "+Inf"}
    assert all(s.labels["grpc_target"] == target for s in buckets)

    started = found["grpc_client_attempt_started_total"]
    assert {s.labels["grpc_method"] for s in started} == {METHOD}
    assert sum(s.value for s in started) == 30
    assert {s.labels["grpclb_endpoint"] for s in started} == set(fleet.addresses)
    attempts = found["grpc_client_attempt_duration_seconds_count"]
    assert {s.labels["grpc_status"] for s in attempts} == {"OK", "NOT_FOUND"}
    assert "grpc_client_attempt_duration_seconds_bucket" in found
