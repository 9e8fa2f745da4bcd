"""TLS to every pod, verified against the Service's name while dialling pod IPs.

    python examples/tls_client.py          # 3 local TLS pods with a throwaway CA (needs trustme)
    python examples/tls_client.py dns:///echo.default.svc.cluster.local:9443 --ca ca.pem

grpclb dials each pod's IP but keeps the Service's host name as the call
authority and the TLS name, so a certificate issued for
echo.default.svc.cluster.local verifies; verification is never switched off.
"""

from __future__ import annotations

import argparse
import contextlib
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import grpc

import grpclb
from grpclb.testing import echo_pb2, echo_pb2_grpc


@contextlib.contextmanager
def local_tls_service(pods: int = 3) -> Iterator[tuple[str, grpc.ChannelCredentials]]:
    """TLS pods whose certificate names the Service, a DNS server, and credentials trusting them."""
    from grpclb.testing import SERVICE_NAME, DnsServer, PodFleet, TestPki

    pki = TestPki()  # a throwaway CA; the certificate below names the Service only
    with DnsServer() as dns, PodFleet(pods, tls=pki.server_tls(SERVICE_NAME)) as fleet:
        dns.set_records(SERVICE_NAME, [pod.host for pod in fleet])
        yield dns.target(SERVICE_NAME, fleet.port), pki.client_credentials()


def run(target: str, credentials: grpc.ChannelCredentials, calls: int = 30) -> None:
    with grpclb.channel(target, credentials=credentials, policy="round_robin") as channel:
        channel.wait_for_endpoints(min_ready=None, timeout=10)  # every pod, not just the first
        stub = echo_pb2_grpc.EchoStub(channel)
        served = Counter(stub.Unary(echo_pb2.EchoRequest(), timeout=5).pod for _ in range(calls))
        for pod, count in sorted(served.items()):
            print(f"{pod:>24}  {count:5d} calls over TLS")
        print(repr(channel))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("target", nargs="?", help="e.g. dns:///echo.default.svc.cluster.local:9443")
    parser.add_argument("--ca", help="PEM file of the CA to trust (default: the system's roots)")
    args = parser.parse_args()
    if args.target:
        roots = Path(args.ca).read_bytes() if args.ca else None
        run(args.target, grpc.ssl_channel_credentials(root_certificates=roots))
    else:
        with local_tls_service() as (target, credentials):
            run(target, credentials)


if __name__ == "__main__":
    main()
