"""Balance concurrent asyncio calls across every pod of a headless Service.

    python examples/asyncio_client.py                 # starts 3 local pods and a DNS server
    python examples/asyncio_client.py dns:///echo.default.svc.cluster.local:9000

grpclb.aio.channel returns a grpc.aio.Channel with the same settings, policies
and stats as the sync channel. Create it anywhere; it belongs to the event loop
that first uses it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
from collections import Counter
from collections.abc import Iterator

import grpclb.aio
from grpclb.testing import echo_pb2, echo_pb2_grpc


@contextlib.contextmanager
def local_service(pods: int = 3) -> Iterator[str]:
    """Pods on 127.0.0.2, 127.0.0.3, ... and a DNS server answering their name."""
    from grpclb.testing import SERVICE_NAME, DnsServer, PodFleet

    with DnsServer() as dns, PodFleet(pods) as fleet:
        dns.set_records(SERVICE_NAME, [pod.host for pod in fleet])
        yield dns.target(SERVICE_NAME, fleet.port)


async def run(target: str, calls: int) -> None:
    # Keyword settings win over GRPCLB_* variables; here, recycle connections every 5 min.
    async with grpclb.aio.channel(target, max_connection_age="5m") as channel:
        # Each call picks its pod when it is created, among connected pods: wait for every
        # pod DNS lists (channel_ready() returns on the first) before the burst below.
        await channel.wait_for_endpoints(min_ready=None, timeout=10)
        stub = echo_pb2_grpc.EchoStub(channel)

        # Unary calls, all in flight at once: each picks its pod when it starts.
        replies = await asyncio.gather(
            *(stub.Unary(echo_pb2.EchoRequest(sleep_ms=20), timeout=5) for _ in range(calls))
        )
        for pod, count in sorted(Counter(reply.pod for reply in replies).items()):
            print(f"{pod:>24}  {count:5d} calls")

        # A stream stays on the pod it started on until it ends.
        stream = stub.ServerStream(echo_pb2.EchoRequest(count=5), timeout=5)
        pods = {reply.pod async for reply in stream}
        print(f"5 streamed replies, all from {pods}")
        print(channel.stats().endpoints[0])
        print(repr(channel))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("target", nargs="?", help="e.g. dns:///echo.default.svc.cluster.local:9000")
    parser.add_argument("--calls", type=int, default=300, help="concurrent calls (default 300)")
    args = parser.parse_args()
    if args.target:
        asyncio.run(run(args.target, args.calls))
    else:
        with local_service() as target:
            asyncio.run(run(target, args.calls))


if __name__ == "__main__":
    main()
