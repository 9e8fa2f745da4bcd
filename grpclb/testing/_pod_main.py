"""The server side of a test pod, and the entry point of a pod in its own process.

Thread pods and process pods run this same code, so a test that moves from
one to the other sees the same behaviour. Run as
``python -m grpclb.testing._pod_main --host H --port P``; it prints
``READY H:P`` once serving (plus ``control=H:Q`` when TLS moves the Control
service to a plaintext side port), then serves until its standard input says
``stop GRACE`` or closes. Closing counts so that a pod never outlives a parent
that died without cleaning up.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
import threading
from collections.abc import Iterable, Iterator, Sequence
from concurrent import futures
from dataclasses import dataclass, field
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from grpclb.testing import echo_pb2, echo_pb2_grpc

MODES = frozenset(
    {
        "ok",
        "unavailable",
        "unavailable_pushback",
        "headers_then_unavailable",
        "not_found",
        "slow",
        "hang",
        "sigkill_at",
    }
)
# "unavailable_pushback": UNAVAILABLE with gRFC A6's ``grpc-retry-pushback-ms`` set to
# ``delay_ms``: the server says when a retry (or the next hedge) may come.
# "sigkill_at": the pod process SIGKILLs itself as it starts call number ``delay_ms`` (a
# count here, not a delay): an exact moment under any load, where a signal from outside,
# timed by polling counts through the same busy server, lands late. Process pods only.
# A hanging call without a deadline would otherwise pin a worker thread forever.
HANG_LIMIT_S = 60.0
# Bounds the work one request can ask for, so a typo cannot stall a test run.
MAX_STREAM_REPLIES = 100_000
_FAILURES = {"unavailable": grpc.StatusCode.UNAVAILABLE, "not_found": grpc.StatusCode.NOT_FOUND}


def format_address(host: str, port: int) -> str:
    """Formats ``host:port`` the way gRPC targets and ``context.peer()`` bracket IPv6."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


@dataclass
class PodState:
    """What the Control service reads and writes; shared by every handler thread."""

    address: str
    lock: threading.Lock = field(default_factory=threading.Lock)
    mode: str = "ok"
    delay_ms: int = 0
    calls: int = 0
    in_flight: int = 0
    peers: set[str] = field(default_factory=set)
    may_kill_itself: bool = False  # a pod process of its own: "sigkill_at" is allowed

    def snapshot_locked(self) -> echo_pb2.PodStats:
        """Builds the stats message; the caller holds ``lock``."""
        return echo_pb2.PodStats(
            pod=self.address,
            calls=self.calls,
            connections=len(self.peers),
            in_flight=self.in_flight,
            peers=sorted(self.peers),
        )


class EchoServicer(echo_pb2_grpc.EchoServicer):
    """Echo with the failure modes a balancer must survive, chosen at run time."""

    def __init__(self, state: PodState) -> None:
        self._state = state

    @contextlib.contextmanager
    def _call(self, context: grpc.ServicerContext) -> Iterator[threading.Event]:
        """Counts the call and applies the pod's mode before the handler answers.

        Yields an event set when the call ends (deadline, cancel, completion),
        so every wait inside a handler stops as soon as nobody is listening.
        """
        ended = threading.Event()
        if not context.add_callback(ended.set):
            ended.set()  # the call already ended before the handler ran
        state = self._state
        with state.lock:
            state.calls += 1
            state.in_flight += 1
            state.peers.add(context.peer())
            mode, delay_ms = state.mode, state.delay_ms
            if mode == "sigkill_at" and state.calls >= delay_ms:
                os.kill(os.getpid(), signal.SIGKILL)
        try:
            if mode in _FAILURES:
                context.abort(_FAILURES[mode], f"pod {state.address} set to {mode}")
            elif mode == "unavailable_pushback":
                context.set_trailing_metadata((("grpc-retry-pushback-ms", str(delay_ms)),))
                context.abort(grpc.StatusCode.UNAVAILABLE, f"pod {state.address} pushes back")
            elif mode == "headers_then_unavailable":  # answered, then failed: A6 commits
                context.send_initial_metadata((("grpclb-test-pod", state.address),))
                context.abort(grpc.StatusCode.UNAVAILABLE, f"pod {state.address} set to {mode}")
            elif mode == "slow":
                ended.wait(delay_ms / 1000)
            elif mode == "hang":
                remaining = context.time_remaining()
                limit = HANG_LIMIT_S if remaining is None else min(remaining, HANG_LIMIT_S)
                ended.wait(max(limit, 0.0))
                if context.is_active():
                    context.abort(grpc.StatusCode.DEADLINE_EXCEEDED, "hang limit reached")
            yield ended
        finally:
            with state.lock:
                state.in_flight -= 1

    def _reply(self, message: str, index: int) -> echo_pb2.EchoReply:
        return echo_pb2.EchoReply(pod=self._state.address, message=message, index=index)

    def Unary(
        self, request: echo_pb2.EchoRequest, context: grpc.ServicerContext
    ) -> echo_pb2.EchoReply:
        with self._call(context) as ended:
            ended.wait(request.sleep_ms / 1000)
            return self._reply(request.message, 0)

    def ServerStream(
        self, request: echo_pb2.EchoRequest, context: grpc.ServicerContext
    ) -> Iterator[echo_pb2.EchoReply]:
        with self._call(context) as ended:
            for index in range(min(request.count, MAX_STREAM_REPLIES)):
                if ended.wait(request.sleep_ms / 1000):
                    return
                yield self._reply(request.message, index)

    def ClientStream(
        self, request_iterator: Iterable[echo_pb2.EchoRequest], context: grpc.ServicerContext
    ) -> echo_pb2.EchoReply:
        with self._call(context) as ended:
            parts: list[str] = []
            for request in request_iterator:
                ended.wait(request.sleep_ms / 1000)
                parts.append(request.message)
            return self._reply("".join(parts), len(parts))

    def BidiStream(
        self, request_iterator: Iterable[echo_pb2.EchoRequest], context: grpc.ServicerContext
    ) -> Iterator[echo_pb2.EchoReply]:
        with self._call(context) as ended:
            for index, request in enumerate(request_iterator):
                if ended.wait(request.sleep_ms / 1000):
                    return
                yield self._reply(request.message, index)


class ControlServicer(echo_pb2_grpc.ControlServicer):
    """Steers the pod; deliberately invisible in the counts it reports."""

    def __init__(self, state: PodState) -> None:
        self._state = state

    def SetMode(self, request: echo_pb2.Mode, context: grpc.ServicerContext) -> echo_pb2.Mode:
        if request.mode not in MODES:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"unknown mode {request.mode!r}")
        if request.mode == "sigkill_at" and not self._state.may_kill_itself:
            context.abort(
                grpc.StatusCode.FAILED_PRECONDITION, "sigkill_at is for process pods only"
            )
        with self._state.lock:
            self._state.mode, self._state.delay_ms = request.mode, request.delay_ms
        return echo_pb2.Mode(mode=request.mode, delay_ms=request.delay_ms)

    def GetStats(self, request: echo_pb2.Empty, context: grpc.ServicerContext) -> echo_pb2.PodStats:
        with self._state.lock:
            return self._state.snapshot_locked()

    def ResetStats(
        self, request: echo_pb2.Empty, context: grpc.ServicerContext
    ) -> echo_pb2.PodStats:
        with self._state.lock:
            before = self._state.snapshot_locked()
            self._state.calls = 0
            self._state.peers.clear()
        return before


@dataclass
class PodServer:
    """A running pod server; ``control_port`` differs from ``port`` only under TLS."""

    host: str
    port: int
    control_port: int
    server: Any
    health: health.HealthServicer | None
    executor: futures.ThreadPoolExecutor

    def set_health(self, status: str, service: str = "") -> None:
        """Sets a grpc.health.v1 status by name (SERVING, NOT_SERVING, ...); Watch streams
        see the change at once."""
        if self.health is None:
            raise RuntimeError("this pod serves no grpc.health.v1 service")
        value = health_pb2.HealthCheckResponse.ServingStatus.Value(status)
        self.health.set(service, value)

    def stop(self, grace: float | None = 0) -> None:
        """Stops serving; waits a bounded time for the handlers to be cancelled."""
        if self.health is not None:
            self.health.enter_graceful_shutdown()
        self.server.stop(grace).wait(timeout=(grace or 0) + 5)
        self.executor.shutdown(wait=False, cancel_futures=True)


def serve(
    host: str,
    port: int,
    *,
    tls: tuple[bytes, bytes] | None = None,
    max_workers: int = 32,
    health_service: bool = True,
    may_kill_itself: bool = False,
) -> PodServer:
    """Starts a pod server on ``host:port``; ``tls`` is ``(private_key_pem, cert_chain_pem)``.

    ``health_service=False`` serves no grpc.health.v1, as many real servers do not.
    ``may_kill_itself`` allows the "sigkill_at" mode: only in a pod process of its own.

    Raises ``OSError`` when the address is taken: ``grpc.so_reuseport`` is off so
    two pods can never silently share one address.
    """
    executor = futures.ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="pod")
    server = grpc.server(executor, options=[("grpc.so_reuseport", 0)])
    state = PodState(address=format_address(host, port), may_kill_itself=may_kill_itself)
    health_servicer = health.HealthServicer()
    for service in ("", "grpclb.testing.Echo"):
        health_servicer.set(service, health_pb2.HealthCheckResponse.SERVING)
    add_echo: Any = echo_pb2_grpc.add_EchoServicer_to_server  # generated, untyped
    add_control: Any = echo_pb2_grpc.add_ControlServicer_to_server
    add_echo(EchoServicer(state), server)
    add_control(ControlServicer(state), server)
    if health_service:
        health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    try:
        if tls is None:
            bound = server.add_insecure_port(format_address(host, port))
            control = bound
        else:
            creds = grpc.ssl_server_credentials([tls])
            bound = server.add_secure_port(format_address(host, port), creds)
            control = server.add_insecure_port(format_address(host, 0))
    except RuntimeError as exc:
        executor.shutdown(wait=False)
        raise OSError(f"cannot bind pod to {format_address(host, port)}: {exc}") from exc
    state.address = format_address(host, bound)
    server.start()
    served = health_servicer if health_service else None
    return PodServer(host, bound, control, server, served, executor)


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m grpclb.testing._pod_main")
    parser.add_argument("--host", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--name", default="", help="only shown in the process list and errors")
    parser.add_argument("--tls-key", help="PEM private key file; TLS when given with --tls-cert")
    parser.add_argument("--tls-cert", help="PEM certificate chain file")
    parser.add_argument("--max-workers", type=int, default=32)
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse(argv)
    name = args.name or format_address(args.host, args.port)
    tls = None
    if args.tls_key and args.tls_cert:
        with open(args.tls_key, "rb") as key, open(args.tls_cert, "rb") as chain:
            tls = (key.read(), chain.read())
    try:
        pod = serve(
            args.host, args.port, tls=tls, max_workers=args.max_workers, may_kill_itself=True
        )
    except OSError as exc:
        print(f"pod {name}: {exc}", file=sys.stderr, flush=True)
        return 1
    # SIGTERM ends the pod like a closed stdin, through the finally below.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    grace, code = 0.0, 0
    try:
        ready = f"READY {format_address(pod.host, pod.port)}"
        if pod.control_port != pod.port:
            ready += f" control={format_address(pod.host, pod.control_port)}"
        print(ready, flush=True)
        line = sys.stdin.readline().split()
        if len(line) == 2 and line[0] == "stop":
            grace = float(line[1])
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    finally:
        pod.stop(grace)
        sys.stdout.flush()
        sys.stderr.flush()
        # Skips interpreter teardown: leftover grpc threads must not delay the exit.
        os._exit(code)


if __name__ == "__main__":
    sys.exit(main())
