"""Before and after: a native grpcio client, then the same client on grpclb.

    python examples/migrating_from_grpcio.py      # starts 3 local pods; no DNS server needed
    python examples/migrating_from_grpcio.py ipv4:127.0.0.2:9000,127.0.0.3:9000

Both halves make the same calls through the same generated stub and the same
interceptor. Before: one grpcio channel whose service config retries UNAVAILABLE; its
default pick_first policy sends every call to one pod. After: what
docs/migrating-from-grpcio.md says to change, and nothing else; every pod serves.
The target here is a static ``ipv4:`` list; in a cluster it is the headless Service,
``dns:///my-svc.my-ns.svc.cluster.local:9000``, the same string for both.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import grpc

import grpclb
from grpclb.testing import echo_pb2, echo_pb2_grpc

# ---- before: plain grpcio ---------------------------------------------------------------

SERVICE_CONFIG = {
    "methodConfig": [
        {
            "name": [{"service": "grpclb.testing.Echo"}],
            "timeout": "5s",
            "retryPolicy": {
                "maxAttempts": 3,
                "initialBackoff": "0.025s",
                "maxBackoff": "0.25s",
                "backoffMultiplier": 2,
                "retryableStatusCodes": ["UNAVAILABLE"],
            },
        }
    ]
}
KEEPALIVE = [
    ("grpc.keepalive_time_ms", 60_000),  # at least the server's permitted ping interval
    ("grpc.keepalive_timeout_ms", 20_000),
]


def before_channel(target: str) -> grpc.Channel:
    options = [
        ("grpc.service_config", json.dumps(SERVICE_CONFIG)),
        ("grpc.enable_retries", 1),
        ("grpc.max_receive_message_length", 16 * 1024 * 1024),
        *KEEPALIVE,
    ]
    return grpc.insecure_channel(target, options=options)


# ---- after: grpclb ----------------------------------------------------------------------


def after_channel(target: str) -> grpclb.Channel:
    options = [
        # Deleted: grpc.service_config and grpc.enable_retries. The retry policy is now
        # grpclb's (retries, retry_codes, backoff), which retries on *another* pod.
        ("grpc.max_receive_message_length", 16 * 1024 * 1024),  # kept: per pod channel
        *KEEPALIVE,  # kept: every pod connection pings on its own
    ]
    return grpclb.channel(
        target,
        options=options,
        policy="round_robin",  # or keep the default, least_request
        retries=2,  # maxAttempts 3 = 1 call + 2 retries
        retry_codes="UNAVAILABLE",
        retry_backoff_base="25ms",
        retry_backoff_max="250ms",
    )


# ---- shared by both: the stub, an interceptor, the calls --------------------------------


class CountingInterceptor(grpc.UnaryUnaryClientInterceptor):  # type: ignore[misc]
    """Counts the calls it sees and tags each with metadata, as auth interceptors do."""

    def __init__(self) -> None:
        self.calls = 0
        self._lock = threading.Lock()

    def intercept_unary_unary(
        self, continuation: Callable[..., Any], details: Any, request: Any
    ) -> Any:
        with self._lock:
            self.calls += 1
        metadata = [*(details.metadata or ()), ("x-client", "migrating-example")]
        return continuation(details._replace(metadata=metadata), request)


@dataclass
class Result:
    served: Counter[str] = field(default_factory=Counter)
    failed: int = 0
    intercepted: int = 0


def make_calls(channel: grpc.Channel, calls: int) -> Result:
    interceptor = CountingInterceptor()
    stub = echo_pb2_grpc.EchoStub(grpc.intercept_channel(channel, interceptor))
    result = Result()
    for i in range(calls):
        try:
            result.served[stub.Unary(echo_pb2.EchoRequest(message=str(i)), timeout=5).pod] += 1
        except grpc.RpcError:
            result.failed += 1
    result.intercepted = interceptor.calls
    return result


def wait_until_ready(channel: grpclb.Channel, pods: int, timeout: float = 10.0) -> None:
    """Until every pod is connected, calls go to those that are; wait for all of them."""
    deadline = time.monotonic() + timeout
    while sum(p.state == "ready" for p in channel.stats()) < pods:
        if time.monotonic() > deadline:
            raise TimeoutError(f"not every pod is ready: {channel!r}")
        time.sleep(0.02)


def before(target: str, calls: int = 30) -> Result:
    with before_channel(target) as channel:
        grpc.channel_ready_future(channel).result(timeout=10)
        return make_calls(channel, calls)


def after(target: str, calls: int = 30) -> tuple[Result, grpclb.ChannelStats]:
    with after_channel(target) as channel:
        wait_until_ready(channel, pods=len(target.split(",")))
        return make_calls(channel, calls), channel.stats()


def report(name: str, result: Result) -> None:
    pods = ", ".join(f"{pod} {n}" for pod, n in sorted(result.served.items()))
    print(f"{name}: {result.intercepted} calls intercepted, {result.failed} failed; {pods}")


@contextlib.contextmanager
def local_pods(count: int = 3) -> Iterator[str]:
    """Pods on 127.0.0.2, 127.0.0.3, ...: a static ipv4: target, no DNS server."""
    from grpclb.testing import PodFleet

    with PodFleet(count) as fleet:
        yield "ipv4:" + ",".join(fleet.addresses)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("target", nargs="?", help="e.g. dns:///echo.default.svc.cluster.local:9000")
    parser.add_argument("--calls", type=int, default=30)
    args = parser.parse_args()
    with contextlib.ExitStack() as stack:
        target = args.target or stack.enter_context(local_pods())
        report("before (grpcio)", before(target, args.calls))
        result, stats = after(target, args.calls)
        report("after (grpclb) ", result)
        print(f"after: {stats.retries} retries (each on another pod)")


if __name__ == "__main__":
    main()
