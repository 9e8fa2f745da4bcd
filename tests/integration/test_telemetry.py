"""Metrics and trace events, read back with the OpenTelemetry SDK's in-memory exporters."""

from __future__ import annotations

import logging

import grpc
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

import grpclb
from grpclb import telemetry
from grpclb.testing import SERVICE_NAME, echo_pb2
from tests.helpers import stub, wait_ready, wait_until


def points(reader: InMemoryMetricReader) -> dict[str, list]:
    """Metric name -> its data points, from one collection."""
    found: dict[str, list] = {}
    data = reader.get_metrics_data()
    for resource in data.resource_metrics if data else ():
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                found.setdefault(metric.name, []).extend(metric.data.data_points)
    return found


def total(found: dict[str, list], name: str) -> int:
    return sum(int(p.value) for p in found.get(name, ()))


def test_calls_an_ejection_and_a_recycle_are_counted(pods, dns_server, caplog):
    fleet = pods(3)
    dns_server.set_records(SERVICE_NAME, [p.host for p in fleet])
    first = fleet[0]
    first.set_mode("unavailable")
    reader = InMemoryMetricReader()
    settings = dict(
        policy="pick_first",
        retries=0,
        consecutive_failures=3,
        max_requests_per_connection=60,
        base_ejection_time="60s",
    )
    caplog.set_level(logging.INFO, logger="grpclb")
    target = dns_server.target(SERVICE_NAME, fleet.port)
    with grpclb.channel(
        target, meter_provider=MeterProvider(metric_readers=[reader]), **settings
    ) as channel:
        wait_ready(channel, 3)
        echo = stub(channel)
        failures = 0
        for _ in range(100):
            try:
                echo.Unary(echo_pb2.EchoRequest(), timeout=5)
            except grpc.RpcError:
                failures += 1
        wait_until(lambda: channel.stats().in_flight == 0, 5)
        wait_until(lambda: total(points(reader), telemetry.RECYCLES) >= 1, 10, "the recycle")
        found = points(reader)

    started = found[telemetry.ATTEMPT_STARTED]
    per_pod = {p.attributes[telemetry.ATTR_ENDPOINT]: int(p.value) for p in started}
    assert sum(per_pod.values()) == 100
    assert per_pod[first.address] == 3 and failures == 3
    assert total(found, telemetry.EJECTIONS_ENFORCED) == 1
    assert total(found, telemetry.RECYCLES) == 1
    durations = found[telemetry.ATTEMPT_DURATION]
    assert sum(p.count for p in durations) == 100
    statuses = {p.attributes[telemetry.ATTR_STATUS] for p in durations}
    assert statuses == {"OK", "UNAVAILABLE"}
    assert all(
        p.attributes[telemetry.ATTR_METHOD] == "grpclb.testing.Echo/Unary" for p in durations
    )
    outcomes = {p.attributes[telemetry.ATTR_OUTCOME] for p in found[telemetry.RESOLUTIONS]}
    assert outcomes == {"records"}
    states = {p.attributes[telemetry.ATTR_STATE]: int(p.value) for p in found[telemetry.ENDPOINTS]}
    assert states.get("ejected") == 1
    messages = [r.getMessage() for r in caplog.records]
    assert any("ejected (consecutive_failures)" in m for m in messages)
    assert sum("added" in m for m in messages) == 3


def test_per_pod_attributes_stop_above_the_limit(pods, dns_server):
    fleet = pods(3)
    dns_server.set_records(SERVICE_NAME, [p.host for p in fleet])
    reader = InMemoryMetricReader()
    with grpclb.channel(
        dns_server.target(SERVICE_NAME, fleet.port),
        metrics_endpoint_limit=2,
        meter_provider=MeterProvider(metric_readers=[reader]),
    ) as channel:
        wait_ready(channel, 3)
        for _ in range(10):
            stub(channel).Unary(echo_pb2.EchoRequest(), timeout=5)
        found = points(reader)
    started = found[telemetry.ATTEMPT_STARTED]
    assert all(telemetry.ATTR_ENDPOINT not in p.attributes for p in started)
    assert sum(int(p.value) for p in started) == 10


def test_a_retried_call_shows_each_attempts_pod_on_the_current_span(pods, dns_server):
    fleet = pods(2)
    dns_server.set_records(SERVICE_NAME, [p.host for p in fleet])
    failing = fleet[0]
    failing.set_mode("unavailable")
    exporter = InMemorySpanExporter()
    tracer = TracerProvider()
    tracer.add_span_processor(SimpleSpanProcessor(exporter))
    with grpclb.channel(
        dns_server.target(SERVICE_NAME, fleet.port), policy="round_robin", consecutive_failures=0
    ) as channel:
        wait_ready(channel, 2)
        echo = stub(channel)
        for _ in range(4):  # round robin: some call starts on the failing pod
            with tracer.get_tracer("test").start_as_current_span("call"):
                echo.Unary(echo_pb2.EchoRequest(), timeout=5)
    spans = exporter.get_finished_spans()
    retried = [s for s in spans if any(e.name == "grpclb.retry" for e in s.events)]
    assert retried, [[e.name for e in s.events] for s in spans]
    events = retried[0].events
    attempts = [e for e in events if e.name == "grpclb.attempt"]
    assert [e.attributes[telemetry.ATTR_ATTEMPT] for e in attempts] == [1, 2]
    assert attempts[0].attributes[telemetry.ATTR_ENDPOINT] == failing.address
    assert attempts[1].attributes[telemetry.ATTR_ENDPOINT] == fleet[1].address
    retry = next(e for e in events if e.name == "grpclb.retry")
    assert retry.attributes[telemetry.ATTR_STATUS] == "UNAVAILABLE"


def test_without_an_sdk_the_call_path_records_nothing(pods, dns_server):
    fleet = pods(1)
    dns_server.set_records(SERVICE_NAME, [p.host for p in fleet])
    with grpclb.channel(dns_server.target(SERVICE_NAME, fleet.port)) as channel:
        assert channel._balancer.telemetry is telemetry.NULL_TELEMETRY
        assert stub(channel).Unary(echo_pb2.EchoRequest(), timeout=5).pod


def test_channels_sharing_a_meter_provider_each_report_their_pods(pods, dns_server):
    fleet = pods(3)
    dns_server.set_records(SERVICE_NAME, [p.host for p in fleet])
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    first_target = dns_server.target(SERVICE_NAME, fleet.port)
    second_target = "ipv4:" + ",".join(fleet.addresses[:2])
    with (
        grpclb.channel(first_target, meter_provider=provider) as first,
        grpclb.channel(second_target, meter_provider=provider) as second,
    ):
        wait_ready(first, 3)
        wait_ready(second, 2)
        ready = {
            p.attributes[telemetry.ATTR_TARGET]: int(p.value)
            for p in points(reader)[telemetry.ENDPOINTS]
            if p.attributes[telemetry.ATTR_STATE] == "ready"
        }
    assert ready == {first_target: 3, second_target: 2}
