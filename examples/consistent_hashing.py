"""Send each user's calls to the same pod: consistent hashing on a metadata key.

    python examples/consistent_hashing.py             # 4 local pods, then a 5th joins
    python examples/consistent_hashing.py dns:///echo.default.svc.cluster.local:9000

With policy="ring_hash" (or "maglev") and hash_key="x-user-id", the value of
the call's x-user-id metadata picks the pod. Every client process maps a user
to the same pod, and when a pod joins only the users it takes move.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

import grpc

import grpclb
from grpclb.testing import echo_pb2, echo_pb2_grpc

USERS = [f"user-{n}" for n in range(200)]


def owners(channel: grpc.Channel) -> dict[str, str]:
    """Which pod serves each user; asks three times to show that it never changes."""
    stub = echo_pb2_grpc.EchoStub(channel)
    found: dict[str, set[str]] = {}
    for _ in range(3):
        for user in USERS:
            reply = stub.Unary(echo_pb2.EchoRequest(), metadata=[("x-user-id", user)], timeout=5)
            found.setdefault(user, set()).add(reply.pod)
    unstable = sum(1 for pods in found.values() if len(pods) > 1)
    print(f"{unstable} of {len(USERS)} users were served by more than one pod")
    return {user: min(pods) for user, pods in found.items()}


def show(owner: dict[str, str]) -> None:
    for pod in sorted(set(owner.values())):
        print(f"{pod:>24}  {sum(1 for p in owner.values() if p == pod):4d} users")


def run(target: str, scale_up: Callable[[], int] | None = None) -> None:
    with grpclb.channel(target, policy="ring_hash", hash_key="x-user-id") as channel:
        channel.wait_for_endpoints(min_ready=None, timeout=10)
        before = owners(channel)
        show(before)
        if scale_up is not None:
            channel.wait_for_endpoints(min_ready=scale_up(), timeout=10)
            after = owners(channel)
            moved = [user for user in USERS if before[user] != after[user]]
            new_pods = set(after.values()) - set(before.values())
            print(f"after a pod joined, {len(moved)} users moved, all to {new_pods}:")
            show(after)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("target", nargs="?", help="e.g. dns:///echo.default.svc.cluster.local:9000")
    args = parser.parse_args()
    if args.target:
        run(args.target)
        return
    from grpclb.testing import SERVICE_NAME, DnsServer, PodFleet

    with DnsServer() as dns, PodFleet(4) as fleet:
        dns.set_records(SERVICE_NAME, [pod.host for pod in fleet])

        def scale_up() -> int:
            fleet.add(1)
            dns.set_records(SERVICE_NAME, [pod.host for pod in fleet])
            return len(fleet)

        run(dns.target(SERVICE_NAME, fleet.port), scale_up)


if __name__ == "__main__":
    main()
