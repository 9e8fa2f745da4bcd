"""The per-call metric's pure parts: method names, statuses, and the no-SDK path."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from grpclb import telemetry
from grpclb.errors import LocalRpcError


def test_method_names_lose_their_leading_slash_as_a66_writes_them():
    assert telemetry.method_attribute("/echo.Echo/Who") == "echo.Echo/Who"
    assert telemetry.method_attribute("echo.Echo/Who") == "echo.Echo/Who"


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (None, grpc.StatusCode.OK),
        (LocalRpcError(grpc.StatusCode.UNAVAILABLE, "no pods"), grpc.StatusCode.UNAVAILABLE),
        (asyncio.CancelledError(), grpc.StatusCode.CANCELLED),
        (ValueError("Cannot invoke RPC on closed channel!"), None),
        (KeyboardInterrupt(), None),
    ],
)
def test_a_calls_status_is_what_its_caller_got(error, code):
    assert telemetry.status_of(error) is code


def test_the_null_telemetry_only_runs_the_call():
    null = telemetry.NULL_TELEMETRY
    assert null.timed("/a.B/C", lambda x: x + 1, 1) == 2
    with pytest.raises(ZeroDivisionError):
        null.timed("/a.B/C", lambda: 1 / 0)


def test_timed_records_one_point_per_call_with_registered_names_only():
    reader = InMemoryMetricReader()
    recorder = telemetry.Telemetry("dns:///svc:9", MeterProvider([reader]), 100, lambda: [])
    recorder.register_method("/echo.Echo/Who")
    recorder.timed("/echo.Echo/Who", lambda: "reply")
    with pytest.raises(LocalRpcError):
        recorder.timed("/echo.Echo/Who", _raise(grpc.StatusCode.DEADLINE_EXCEEDED))
    recorder.timed("/not.Registered/Method", lambda: "reply")
    recorder.call_ended("/echo.Echo/Who", 0.0, ValueError("closed"))  # no status: not recorded
    data = reader.get_metrics_data()
    found = {
        (p.attributes["grpc.method"], p.attributes["grpc.status"]): p.count
        for m in data.resource_metrics[0].scope_metrics[0].metrics
        if m.name == telemetry.CALL_DURATION
        for p in m.data.data_points
    }
    assert found == {
        ("echo.Echo/Who", "OK"): 1,
        ("echo.Echo/Who", "DEADLINE_EXCEEDED"): 1,
        ("other", "OK"): 1,
    }


def _raise(code: grpc.StatusCode):
    def run() -> None:
        raise LocalRpcError(code, "failed")

    return run


def test_an_attempt_reaches_the_current_span_of_any_tracer_provider():
    """The cheap context read must see what OpenTelemetry's public API sees, with a
    provider that is not the global one, and nothing outside any span."""
    from opentelemetry.sdk.trace import TracerProvider

    tracer = TracerProvider().get_tracer("test")
    telemetry.trace_attempt("127.0.0.2:9000", 1)  # no span: nothing to mark, no error
    with tracer.start_as_current_span("outer") as span:
        assert telemetry.current_context()  # the span's context, through the fast read
        telemetry.trace_attempt("127.0.0.2:9000", 1)
        telemetry.trace_attempt("127.0.0.3:9000", 2)
    assert not telemetry.current_context()
    events = [(e.name, dict(e.attributes or {})) for e in span.events]  # type: ignore[attr-defined]
    assert [name for name, _ in events] == ["grpclb.attempt", "grpclb.attempt"]
    assert [attributes[telemetry.ATTR_ATTEMPT] for _, attributes in events] == [1, 2]
