"""Export grpclb's metrics to Prometheus: an HTTP endpoint that Prometheus scrapes.

    python examples/prometheus_exporter.py                 # 3 local pods, one scrape printed
    python examples/prometheus_exporter.py --serve 9464    # keep serving /metrics on :9464
    python examples/prometheus_exporter.py dns:///echo.default.svc.cluster.local:9000 --serve 9464

OpenTelemetry's Prometheus exporter (``opentelemetry-exporter-prometheus``) turns
the OpenTelemetry names into Prometheus ones: ``grpc.client.call.duration`` (unit
``s``) is scraped as ``grpc_client_call_duration_seconds_bucket``/``_sum``/``_count``,
``grpc.client.attempt.started`` as ``grpc_client_attempt_started_total``, and the
attributes become labels (``grpc_method="my.pkg.Service/Method"``, ``grpc_status="OK"``).
The file is not named prometheus_client.py: run as a script, that name would hide
the ``prometheus_client`` package it imports.
"""

from __future__ import annotations

import argparse
import threading
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager

import grpc
from opentelemetry.exporter.prometheus import PrometheusMetricReader
from opentelemetry.sdk.metrics import MeterProvider
from prometheus_client import CollectorRegistry, start_http_server

import grpclb
from grpclb.testing import echo_pb2, echo_pb2_grpc


@contextmanager
def metrics_endpoint(port: int = 0, addr: str = "127.0.0.1") -> Iterator[tuple[MeterProvider, str]]:
    """A MeterProvider whose metrics are served at the yielded ``http://.../metrics`` URL.

    A registry of its own (not prometheus_client's global one) keeps two of these in
    one process apart. In a service, listen on the pod's address instead of loopback.
    """
    registry = CollectorRegistry()
    provider = MeterProvider(metric_readers=[PrometheusMetricReader(registry=registry)])
    server, thread = start_http_server(port, addr=addr, registry=registry)
    try:
        yield provider, f"http://{addr}:{server.server_port}/metrics"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
        provider.shutdown()


def make_calls(target: str, provider: MeterProvider, calls: int) -> int:
    """Calls through grpclb, recorded on ``provider``; returns how many failed."""
    failed = 0
    with grpclb.channel(target, meter_provider=provider, policy="round_robin") as channel:
        channel.wait_for_endpoints(min_ready=None, timeout=10)
        stub = echo_pb2_grpc.EchoStub(channel)  # generated stubs name their methods
        for i in range(calls):
            try:
                stub.Unary(echo_pb2.EchoRequest(message=str(i)), timeout=5)
            except grpc.RpcError:  # recorded too, with its status
                failed += 1
    return failed


def scrape(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as response:
        return str(response.read().decode("utf-8"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("target", nargs="?", help="e.g. dns:///echo.default.svc.cluster.local:9000")
    parser.add_argument("--calls", type=int, default=30)
    parser.add_argument("--serve", type=int, metavar="PORT", help="keep serving on this port")
    args = parser.parse_args()
    addr = "0.0.0.0" if args.serve else "127.0.0.1"
    with metrics_endpoint(args.serve or 0, addr) as (provider, url):
        if args.target:
            make_calls(args.target, provider, args.calls)
        else:
            from grpclb.testing import PodFleet

            with PodFleet(3) as fleet:  # static ipv4: target, no DNS server needed
                make_calls("ipv4:" + ",".join(fleet.addresses), provider, args.calls)
        if args.serve:
            print(f"serving {url}; Ctrl-C to stop", flush=True)
            threading.Event().wait()
        for line in scrape(url).splitlines():
            if line.startswith(("grpc_client_", "grpclb_")) and "_bucket" not in line:
                print(line)


if __name__ == "__main__":
    main()
