"""Balance calls from a blocking gRPC client across every pod of a headless Service.

    python examples/sync_client.py                    # starts 3 local pods and a DNS server
    python examples/sync_client.py dns:///echo.default.svc.cluster.local:9000
    python examples/sync_client.py TARGET --forever   # as examples/kubernetes runs it

Settings come from GRPCLB_* environment variables (GRPCLB_POLICY=round_robin, ...),
so one image runs with any configuration. The server is grpclb.testing's Echo
service, whose replies name the pod that served them.
"""

from __future__ import annotations

import argparse
import contextlib
from collections import Counter
from collections.abc import Iterator

import grpc

import grpclb
from grpclb.testing import echo_pb2, echo_pb2_grpc


@contextlib.contextmanager
def local_service(pods: int = 3) -> Iterator[str]:
    """Pods on 127.0.0.2, 127.0.0.3, ... and a DNS server answering their name."""
    from grpclb.testing import SERVICE_NAME, DnsServer, PodFleet

    with DnsServer() as dns, PodFleet(pods) as fleet:
        dns.set_records(SERVICE_NAME, [pod.host for pod in fleet])
        yield dns.target(SERVICE_NAME, fleet.port)


def run(target: str, calls: int, forever: bool) -> None:
    with grpclb.channel(target) as channel:  # a grpc.Channel: stubs work unchanged
        # Calls go to connected pods only: wait for every pod DNS lists, not just the first.
        channel.wait_for_endpoints(min_ready=None, timeout=10)
        stub = echo_pb2_grpc.EchoStub(channel)
        while True:
            served: Counter[str] = Counter()
            failed = 0
            for i in range(calls):
                try:
                    reply = stub.Unary(echo_pb2.EchoRequest(message=str(i)), timeout=5)
                    served[reply.pod] += 1
                except grpc.RpcError as error:
                    failed += 1
                    print(f"call {i} failed: {error.code().name} {error.details()}")
            for pod, count in sorted(served.items()):
                print(f"{pod:>24}  {count:5d} calls")
            print(f"{failed} failed; {channel!r}", flush=True)
            if not forever:
                return


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("target", nargs="?", help="e.g. dns:///echo.default.svc.cluster.local:9000")
    parser.add_argument("--calls", type=int, default=300, help="calls per round (default 300)")
    parser.add_argument("--forever", action="store_true", help="repeat rounds until stopped")
    args = parser.parse_args()
    if args.target:
        run(args.target, args.calls, args.forever)
    else:
        with local_service() as target:
            run(target, args.calls, args.forever)


if __name__ == "__main__":
    main()
