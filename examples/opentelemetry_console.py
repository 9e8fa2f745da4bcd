"""grpclb's OpenTelemetry metrics and trace events, printed by the SDK's console exporters.

    python examples/opentelemetry_console.py          # 3 local pods, one failing every call
    python examples/opentelemetry_console.py dns:///echo.default.svc.cluster.local:9000

grpclb depends on opentelemetry-api only; the application installs the SDK
(pip install opentelemetry-sdk) and configures it BEFORE creating channels,
or passes meter_provider= to grpclb.channel. Without an SDK grpclb records nothing.
"""

from __future__ import annotations

import argparse
import contextlib
from collections.abc import Callable, Iterator

import grpc
from opentelemetry import metrics, trace
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import (
    ConsoleMetricExporter,
    MetricsData,
    PeriodicExportingMetricReader,
)
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import ConsoleSpanExporter, SimpleSpanProcessor

import grpclb
from grpclb.testing import echo_pb2, echo_pb2_grpc


def one_line_per_point(data: MetricsData) -> str:
    """The exporter's default is JSON; one line per data point is easier to read here."""
    lines = []
    for resource in data.resource_metrics:
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                for point in metric.data.data_points:
                    value = getattr(point, "value", None)
                    if value is None:  # a histogram
                        value = f"count={point.count} sum={point.sum:.4f}{metric.unit}"
                    attributes = ", ".join(f"{k}={v}" for k, v in point.attributes.items())
                    lines.append(f"{metric.name} {{{attributes}}} {value}")
    return "\n".join(lines) + "\n"


def span_with_events(span: ReadableSpan) -> str:
    events = "".join(f"\n    {e.name} {dict(e.attributes or {})}" for e in span.events)
    return f"span {span.name}{events}\n"


def configure_opentelemetry() -> MeterProvider:
    """The SDK, set up globally before any channel exists."""
    exporter = ConsoleMetricExporter(formatter=one_line_per_point)
    reader = PeriodicExportingMetricReader(exporter, export_interval_millis=60_000)
    meter_provider = MeterProvider(metric_readers=[reader])
    metrics.set_meter_provider(meter_provider)
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(
        SimpleSpanProcessor(ConsoleSpanExporter(formatter=span_with_events))
    )
    trace.set_tracer_provider(tracer_provider)
    return meter_provider


@contextlib.contextmanager
def local_service(pods: int = 3) -> Iterator[tuple[str, Callable[[], None]]]:
    """Local pods and DNS; the callable makes the first pod fail every call."""
    from grpclb.testing import SERVICE_NAME, DnsServer, PodFleet

    with DnsServer() as dns, PodFleet(pods) as fleet:
        dns.set_records(SERVICE_NAME, [pod.host for pod in fleet])
        yield dns.target(SERVICE_NAME, fleet.port), lambda: fleet[0].set_mode("unavailable")


def run(target: str, break_a_pod: Callable[[], None] | None = None) -> None:
    meter_provider = configure_opentelemetry()
    tracer = trace.get_tracer("example")
    with grpclb.channel(target, policy="round_robin") as channel:
        grpc.channel_ready_future(channel).result(timeout=10)
        stub = echo_pb2_grpc.EchoStub(channel)
        if break_a_pod is not None:
            break_a_pod()  # its calls are retried on other pods, then it is ejected
        for n in range(30):
            # Each attempt's pod, and each retry's reason, are events on the current span.
            span = tracer.start_as_current_span(f"call {n}") if n < 4 else contextlib.nullcontext()
            with span:
                stub.Unary(echo_pb2.EchoRequest(), timeout=5)
        print(repr(channel))
        meter_provider.shutdown()  # a last export, while the channel still has its pods


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("target", nargs="?", help="e.g. dns:///echo.default.svc.cluster.local:9000")
    args = parser.parse_args()
    if args.target:
        run(args.target)
    else:
        with local_service() as (target, break_a_pod):
            run(target, break_a_pod)


if __name__ == "__main__":
    main()
