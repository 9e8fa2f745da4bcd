"""Local pods for the user's own servicer: N real grpcio servers and a static target.

A Kubernetes headless Service is one IP per pod. On Linux every 127.x.x.x address
is loopback, so ``local_pods`` starts pod ``i`` on ``127.0.0.{2+i}`` and yields a
static ``ipv4:`` target listing them: a grpclb channel balances over them exactly
as over a Service's pods, and no DNS server, root or cluster is needed, because
static targets are never resolved. Elsewhere (macOS has only 127.0.0.1) the pods
share 127.0.0.1 on distinct ports, which grpclb balances over just the same.

Needs grpcio only; the servicer and its generated ``add_..._to_server`` are the
user's own.
"""

from __future__ import annotations

import contextlib
import platform
from collections.abc import Callable, Iterator, Sequence
from concurrent import futures
from dataclasses import dataclass, field
from typing import Any

import grpc

AddServicer = Callable[[Any, grpc.Server], None]
STOP_TIMEOUT_S = 5.0


@dataclass
class LocalPods:
    """Running pods: ``target`` for ``grpclb.channel``, and a handle on each server."""

    target: str
    addresses: tuple[str, ...]
    servers: list[grpc.Server] = field(repr=False)

    def stop(self, index: int, grace: float | None = None) -> None:
        """Stop one pod, as a node losing it would: its connections close."""
        self.servers[index].stop(grace).wait(STOP_TIMEOUT_S)

    def stop_all(self, grace: float | None = None) -> None:
        events = [server.stop(grace) for server in self.servers]
        for event in events:
            event.wait(STOP_TIMEOUT_S)

    def __str__(self) -> str:
        return self.target


def pod_hosts(n: int, first_host: int = 2) -> list[str]:
    """Where ``n`` pods listen: one loopback IP each on Linux, else all on 127.0.0.1."""
    if n < 1:
        raise ValueError(f"n must be at least 1 pod, got {n}")
    if platform.system() != "Linux":
        return ["127.0.0.1"] * n
    if not 1 <= first_host <= 255 - n:
        raise ValueError(f"first_host must be in 1..{255 - n} for {n} pods, got {first_host}")
    return [f"127.0.0.{first_host + i}" for i in range(n)]


@contextlib.contextmanager
def local_pods(
    add_servicer: AddServicer,
    servicer: Any = None,
    n: int = 3,
    *,
    make_servicer: Callable[[str], Any] | None = None,
    first_host: int = 2,
    max_workers: int = 8,
    interceptors: Sequence[grpc.ServerInterceptor] = (),
    options: Sequence[tuple[str, Any]] = (),
) -> Iterator[LocalPods]:
    """Start ``n`` pods serving ``servicer``; yield them; stop them on exit.

    ``add_servicer`` is the generated ``add_<Service>Servicer_to_server``. Every pod
    serves the same ``servicer`` object, or, with ``make_servicer``, its own one
    built from the pod's ``ip:port`` (so replies can tell which pod served them).
    Each pod listens on a port the kernel picks, so parallel test runs never collide.
    """
    if (servicer is None) == (make_servicer is None):
        raise ValueError("give either servicer or make_servicer")
    pods = LocalPods(target="", addresses=(), servers=[])
    try:
        addresses = []
        for host in pod_hosts(n, first_host):
            server = grpc.server(
                futures.ThreadPoolExecutor(max_workers=max_workers),
                interceptors=interceptors,
                options=options,
            )
            pods.servers.append(server)
            port = server.add_insecure_port(f"{host}:0")
            if not port:
                raise OSError(f"could not listen on {host}")
            address = f"{host}:{port}"
            add_servicer(make_servicer(address) if make_servicer else servicer, server)
            server.start()
            addresses.append(address)
        pods.addresses = tuple(addresses)
        pods.target = "ipv4:" + ",".join(addresses)
        yield pods
    finally:
        pods.stop_all()
