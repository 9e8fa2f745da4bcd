"""grpc.client.call.duration (gRFC A66): one point per logical call, its retries inside.

Static ``ipv4:`` targets: no DNS server is needed to reach the pods.
"""

from __future__ import annotations

import asyncio

import grpc
import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

import grpclb
import grpclb.aio
from grpclb import telemetry
from grpclb.testing import echo_pb2, echo_pb2_grpc
from tests.integration.test_telemetry import points

METHOD = "grpclb.testing.Echo/Unary"  # as A66 writes it: no leading slash


def by_status(found: dict[str, list], name: str) -> dict[tuple[str, str], int]:
    """(grpc.method, grpc.status) -> how many points the histogram counted."""
    counts: dict[tuple[str, str], int] = {}
    for point in found.get(name, ()):
        key = (point.attributes[telemetry.ATTR_METHOD], point.attributes[telemetry.ATTR_STATUS])
        counts[key] = counts.get(key, 0) + point.count
    return counts


def test_a_retried_call_is_one_call_of_two_attempts(pods):
    fleet = pods(2)
    fleet[0].set_mode("unavailable")
    reader = InMemoryMetricReader()
    target = "ipv4:" + ",".join(fleet.addresses)
    with grpclb.channel(
        target,
        meter_provider=MeterProvider(metric_readers=[reader]),
        policy="round_robin",
        consecutive_failures=0,
        retries=1,
    ) as channel:
        channel.wait_for_endpoints(min_ready=None, timeout=10)
        echo = echo_pb2_grpc.EchoStub(channel)
        for _ in range(10):
            assert echo.Unary(echo_pb2.EchoRequest(), timeout=5).pod == fleet[1].address
        found = points(reader)
    calls = by_status(found, telemetry.CALL_DURATION)
    attempts = by_status(found, telemetry.ATTEMPT_DURATION)
    assert calls == {(METHOD, "OK"): 10}
    # round_robin alternates, so about half the calls met the failing pod first.
    assert attempts[(METHOD, "OK")] == 10 and attempts[(METHOD, "UNAVAILABLE")] >= 1
    call_points = found[telemetry.CALL_DURATION]
    assert all(telemetry.ATTR_ENDPOINT not in p.attributes for p in call_points)
    assert {p.attributes[telemetry.ATTR_TARGET] for p in call_points} == {target}


def test_a_failed_call_records_the_status_its_caller_got(pods):
    fleet = pods(1)
    fleet[0].set_mode("not_found")
    reader = InMemoryMetricReader()
    with grpclb.channel(
        "ipv4:" + fleet.addresses[0], meter_provider=MeterProvider(metric_readers=[reader])
    ) as channel:
        with pytest.raises(grpc.RpcError) as raised:
            echo_pb2_grpc.EchoStub(channel).Unary(echo_pb2.EchoRequest(), timeout=5)
        assert raised.value.code() is grpc.StatusCode.NOT_FOUND
        found = points(reader)
    assert by_status(found, telemetry.CALL_DURATION) == {(METHOD, "NOT_FOUND"): 1}


def test_a_call_the_circuit_breaker_refuses_is_recorded_as_one_unavailable_call(pods):
    # The refusal at a blocking call's first pick was raised before the call was timed.
    fleet = pods(1)
    fleet[0].set_mode("slow", delay_ms=5000)
    reader = InMemoryMetricReader()
    with grpclb.channel(
        "ipv4:" + fleet.addresses[0],
        meter_provider=MeterProvider(metric_readers=[reader]),
        max_requests=1,
    ) as channel:
        channel.wait_for_endpoints(1, timeout=10)
        echo = echo_pb2_grpc.EchoStub(channel)
        held = echo.Unary.future(echo_pb2.EchoRequest(), timeout=10)
        assert channel.stats().in_flight == 1
        with pytest.raises(grpc.RpcError) as raised:
            echo.Unary(echo_pb2.EchoRequest(), timeout=5)
        assert raised.value.code() is grpc.StatusCode.UNAVAILABLE
        assert "max_requests=1" in raised.value.details()
        found = points(reader)
        held.cancel()
    assert by_status(found, telemetry.CALL_DURATION) == {(METHOD, "UNAVAILABLE"): 1}


def test_a_method_no_stub_registered_is_recorded_as_other(pods):
    fleet = pods(1)
    reader = InMemoryMetricReader()
    with grpclb.channel(
        "ipv4:" + fleet.addresses[0], meter_provider=MeterProvider(metric_readers=[reader])
    ) as channel:
        unregistered = channel.unary_unary(
            "/grpclb.testing.Echo/Unary",
            request_serializer=echo_pb2.EchoRequest.SerializeToString,
            response_deserializer=echo_pb2.EchoReply.FromString,
        )
        unregistered(echo_pb2.EchoRequest(), timeout=5)
        found = points(reader)
    assert by_status(found, telemetry.CALL_DURATION) == {("other", "OK"): 1}
    started = found[telemetry.ATTEMPT_STARTED]
    assert {p.attributes[telemetry.ATTR_METHOD] for p in started} == {"other"}


def test_aio_unary_calls_are_timed_as_calls(pods):
    fleet = pods(2)
    fleet[0].set_mode("unavailable")
    reader = InMemoryMetricReader()

    async def main() -> None:
        async with grpclb.aio.channel(
            "ipv4:" + ",".join(fleet.addresses),
            meter_provider=MeterProvider(metric_readers=[reader]),
            policy="round_robin",
            consecutive_failures=0,
            retries=1,
        ) as channel:
            await channel.wait_for_endpoints(min_ready=None, timeout=10)
            echo = echo_pb2_grpc.EchoStub(channel)
            for _ in range(6):
                await echo.Unary(echo_pb2.EchoRequest(), timeout=5)

    asyncio.run(asyncio.wait_for(main(), 30))
    found = points(reader)
    assert by_status(found, telemetry.CALL_DURATION) == {(METHOD, "OK"): 6}
    assert by_status(found, telemetry.ATTEMPT_DURATION)[(METHOD, "UNAVAILABLE")] >= 1
