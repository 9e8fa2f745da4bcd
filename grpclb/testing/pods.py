"""Pods: real gRPC servers on distinct loopback addresses sharing one port.

A Kubernetes headless service resolves to one IP per pod, all on the same
port; 127.0.0.2, 127.0.0.3, ... on one port reproduce that without a cluster.
Thread pods are cheap; process pods can be killed with SIGKILL, the way a node
loses a pod. Every pod is stopped at interpreter exit, and a process pod also
exits when its parent's end of its stdin closes, so no test leaves one behind.
"""

from __future__ import annotations

import abc
import atexit
import contextlib
import ipaddress
import os
import random
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import grpc

from grpclb.testing import echo_pb2, echo_pb2_grpc
from grpclb.testing._pod_main import format_address, serve

CONTROL_TIMEOUT_S = 5.0
READY_TIMEOUT_S = 20.0
# Below Linux's default ephemeral range (32768-60999), so client sockets rarely collide.
PORT_RANGE = (20000, 32000)
PORT_ATTEMPTS = 100
# Extra hosts probed with a fleet's port, so that add() later rarely finds it taken.
PROBE_MARGIN = 8
_PACKAGE_ROOT = str(Path(__file__).resolve().parents[2])

_live: set[Pod] = set()
_live_lock = threading.Lock()
_P = TypeVar("_P", bound="Pod")


@dataclass(frozen=True)
class PodCounts:
    """What a pod saw since its last reset; ``in_flight`` is live, never reset."""

    pod: str
    calls: int
    connections: int
    in_flight: int
    peers: tuple[str, ...]


class Pod(abc.ABC):
    """Common handle: steering and reading a pod goes through its Control service.

    The control channel has its own subchannel pool, so it never shares (or
    shows up as) a connection of the channels under test.
    """

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port, self.control_port = host, port, port
        self._lock = threading.Lock()
        self._channel: Any = None
        self._control: Any = None
        self._stopped = False

    @property
    def address(self) -> str:
        return format_address(self.host, self.port)

    @property
    def control_address(self) -> str:
        """Plaintext Control endpoint: the pod's own address, or a side port under TLS."""
        return format_address(self.host, self.control_port)

    def _call(self, method: str, request: Any) -> Any:
        with self._lock:
            if self._control is None:
                options = [("grpc.use_local_subchannel_pool", 1)]
                self._channel = grpc.insecure_channel(self.control_address, options=options)
                self._control = echo_pb2_grpc.ControlStub(self._channel)  # type: ignore[no-untyped-call]
        return getattr(self._control, method)(request, timeout=CONTROL_TIMEOUT_S)

    def set_mode(self, mode: str, delay_ms: int = 0) -> None:
        self._call("SetMode", echo_pb2.Mode(mode=mode, delay_ms=delay_ms))

    def stats(self) -> PodCounts:
        return _counts(self._call("GetStats", echo_pb2.Empty()))

    def reset_stats(self) -> PodCounts:
        """Resets the counters; returns them as they were, to measure one phase of a test."""
        return _counts(self._call("ResetStats", echo_pb2.Empty()))

    @abc.abstractmethod
    def stop(self, grace: float | None = 0) -> None:
        """Stops serving; in-flight calls get ``grace`` seconds, then are cancelled."""

    def _abandon(self) -> None:
        """Ends the pod at interpreter exit, as fast as possible."""
        self.stop(0)

    def _track(self) -> None:
        with _live_lock:
            _live.add(self)

    def _forget(self) -> None:
        """Closes the control channel and drops the pod from the exit-time cleanup."""
        self._stopped = True
        with self._lock:
            if self._channel is not None:
                self._channel.close()
            self._channel = self._control = None
        with _live_lock:
            _live.discard(self)

    def __enter__(self: _P) -> _P:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = "stopped" if self._stopped else "serving"
        return f"<{type(self).__name__} {self.address} {state}>"


def _counts(msg: echo_pb2.PodStats) -> PodCounts:
    return PodCounts(msg.pod, msg.calls, msg.connections, msg.in_flight, tuple(msg.peers))


@atexit.register
def _stop_leftovers() -> None:
    with _live_lock:
        leftovers = list(_live)
    for pod in leftovers:
        with contextlib.suppress(Exception):
            pod._abandon()


class ThreadPod(Pod):
    """A pod served by this process; ``port=0`` picks a free port.

    ``health_service=False`` leaves out grpc.health.v1; ``set_health`` changes
    the status its Watch streams report.
    """

    def __init__(
        self,
        host: str,
        port: int,
        *,
        tls: tuple[bytes, bytes] | None = None,
        max_workers: int = 32,
        health_service: bool = True,
    ) -> None:
        super().__init__(host, port)
        self._server = serve(
            host, port, tls=tls, max_workers=max_workers, health_service=health_service
        )
        self.port, self.control_port = self._server.port, self._server.control_port
        self._track()

    def set_health(self, status: str, service: str = "") -> None:
        """SERVING, NOT_SERVING, SERVICE_UNKNOWN or UNKNOWN, for ``service`` ("" the server)."""
        self._server.set_health(status, service)

    def stop(self, grace: float | None = 0) -> None:
        if not self._stopped:
            self._forget()
            self._server.stop(grace)


class ProcessPod(Pod):
    """A pod in its own Python process, so that a test can SIGKILL it.

    With ``wait=False`` the constructor only spawns the process; ``wait_ready()``
    later lets a fleet start many pods at once.
    """

    def __init__(
        self,
        host: str,
        port: int,
        *,
        name: str | None = None,
        tls: tuple[bytes, bytes] | None = None,
        wait: bool = True,
        ready_timeout: float = READY_TIMEOUT_S,
    ) -> None:
        super().__init__(host, port)
        self.name = name or format_address(host, port)
        self._dir = tempfile.mkdtemp(prefix="grpclb-pod-")
        self._stderr = os.path.join(self._dir, "stderr.log")
        self._ready = self._stop_sent = False
        args = ["--host", host, "--port", str(port), "--name", self.name]
        for flag, pem in zip(("--tls-key", "--tls-cert"), tls or (), strict=False):
            path = os.path.join(self._dir, flag[2:] + ".pem")
            with open(os.open(path, os.O_WRONLY | os.O_CREAT, 0o600), "wb") as f:
                f.write(pem)
            args += [flag, path]
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [_PACKAGE_ROOT, env.get("PYTHONPATH")]))
        with open(self._stderr, "wb") as stderr:
            self._proc = subprocess.Popen(
                [sys.executable, "-m", "grpclb.testing._pod_main", *args],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=stderr,
                env=env,
            )
        self._track()
        if wait:
            self.wait_ready(ready_timeout)

    @property
    def pid(self) -> int:
        return int(self._proc.pid)

    @property
    def returncode(self) -> int | None:
        """The exit status once the process ended; ``-9`` after ``kill()``."""
        return self._proc.poll()

    def wait_ready(self, timeout: float = READY_TIMEOUT_S) -> None:
        """Waits for ``READY H:P [control=H:Q]``; on failure kills the child, raises its stderr."""
        if self._ready:
            return
        assert self._proc.stdout is not None
        fd, line, deadline = self._proc.stdout.fileno(), b"", time.monotonic() + timeout
        while not line.endswith(b"\n"):
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                self._fail(f"not ready after {timeout:.1f} s")
            chunk = os.read(fd, 1)  # byte by byte: nothing after the line may be swallowed
            if not chunk:
                self._fail(f"exited with code {self._proc.wait(timeout=5)}")
            line += chunk
        words = line.decode(errors="replace").split()
        if words[:1] != ["READY"] or len(words) < 2:
            self._fail(f"said {line!r} instead of READY")
        ports = [int(w.rsplit(":", 1)[1]) for w in words[1:]]
        self.port, self.control_port = ports[0], ports[-1]
        self._ready = True

    def _fail(self, why: str) -> NoReturn:
        self._forget()
        self._sigkill()
        stderr = Path(self._stderr).read_text(errors="replace")[-4000:]
        self._cleanup()
        raise RuntimeError(f"pod {self.name} {why}; its stderr:\n{stderr}")

    def send_stop(self, grace: float | None = 0) -> None:
        """Asks the pod to stop without waiting, so a fleet stops all its pods at once."""
        if self._stop_sent or self._proc.poll() is not None:
            return
        self._stop_sent = True
        assert self._proc.stdin is not None
        with contextlib.suppress(OSError):
            self._proc.stdin.write(f"stop {grace or 0}\n".encode())
            self._proc.stdin.close()

    def stop(self, grace: float | None = 0) -> None:
        if self._stopped:
            return
        self._forget()
        self.send_stop(grace)
        try:
            self._proc.wait(timeout=(grace or 0) + 5)
        except subprocess.TimeoutExpired:
            self._sigkill()
        self._cleanup()

    def kill(self) -> None:
        """SIGKILLs the pod: no goodbye to clients, their connections just break."""
        self._forget()
        self._sigkill()
        self._cleanup()

    _abandon = kill

    def _sigkill(self) -> None:
        if self._proc.poll() is None:
            self._proc.send_signal(signal.SIGKILL)
            self._proc.wait(timeout=5)

    def _cleanup(self) -> None:
        for pipe in (self._proc.stdin, self._proc.stdout):
            if pipe is not None:
                with contextlib.suppress(OSError):
                    pipe.close()
        shutil.rmtree(self._dir, ignore_errors=True)


def pick_port(hosts: Sequence[str], *, udp: bool = False) -> int:
    """A random port free for TCP (and UDP if asked) on every host; bounded tries."""
    for _ in range(PORT_ATTEMPTS):
        port = random.randrange(*PORT_RANGE)
        if all(port_is_free(host, port, udp=udp) for host in hosts):
            return port
    raise OSError(f"no port in {PORT_RANGE} free on {list(hosts)} after {PORT_ATTEMPTS} tries")


def port_is_free(host: str, port: int, *, udp: bool = False) -> bool:
    """Whether a server could bind ``host:port`` (TCP, and UDP if asked) without sharing it.

    TCP is probed with SO_REUSEADDR, as servers bind, so a TIME_WAIT left by an
    earlier test is no obstacle. UDP is probed without it: two sockets that
    both set it share a UDP port on Linux, which is how two dnsmasqs would
    silently split one port's queries.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    kinds = (socket.SOCK_STREAM, socket.SOCK_DGRAM) if udp else (socket.SOCK_STREAM,)
    for kind in kinds:
        with socket.socket(family, kind) as sock:
            if kind == socket.SOCK_STREAM:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind((host, port))
            except OSError:
                return False
    return True


def _host(index: int) -> str:
    """The index-th loopback address; index 2 is 127.0.0.2."""
    if not 1 <= index < 2**24 - 1:
        raise ValueError(f"host index {index} is outside 127.0.0.0/8")
    return str(ipaddress.IPv4Address("127.0.0.0") + index)


class PodFleet:
    """The pods behind one headless service: 127.0.0.2, 127.0.0.3, ... on one port."""

    def __init__(
        self,
        count: int = 0,
        *,
        port: int | None = None,
        processes: bool = False,
        first_host: int = 2,
        tls: tuple[bytes, bytes] | None = None,
    ) -> None:
        self.processes, self.tls = processes, tls
        self._next = first_host
        self._pods: list[Pod] = []
        probe = [_host(first_host + i) for i in range(max(count, 1) + PROBE_MARGIN)]
        self.port = pick_port(probe) if port is None else port
        self.add(count)

    @property
    def pods(self) -> list[Pod]:
        return list(self._pods)

    @property
    def addresses(self) -> list[str]:
        return [pod.address for pod in self._pods]

    def add(self, n: int = 1, *, health_service: bool = True) -> list[Pod]:
        """Starts ``n`` pods on the next hosts; process pods start concurrently.

        ``health_service=False`` (thread pods only) starts pods without grpc.health.v1.
        """
        new: list[Pod] = []
        try:
            for _ in range(n):
                host, self._next = _host(self._next), self._next + 1
                if self.processes:
                    new.append(ProcessPod(host, self.port, tls=self.tls, wait=False))
                else:
                    tls = self.tls
                    new.append(ThreadPod(host, self.port, tls=tls, health_service=health_service))
            for pod in new:
                if isinstance(pod, ProcessPod):
                    pod.wait_ready()
        except BaseException:
            _stop_many(new)
            raise
        self._pods += new
        return new

    def remove(self, pod: Pod, grace: float | None = 0) -> None:
        self._pods.remove(pod)
        pod.stop(grace)

    def counts(self) -> dict[str, int]:
        return {pod.address: pod.stats().calls for pod in self._pods}

    def reset_stats(self) -> None:
        for pod in self._pods:
            pod.reset_stats()

    def stop_all(self, grace: float | None = 0) -> None:
        pods, self._pods = self._pods, []
        _stop_many(pods, grace)

    def __len__(self) -> int:
        return len(self._pods)

    def __iter__(self) -> Iterator[Pod]:
        return iter(list(self._pods))

    def __getitem__(self, index: int) -> Pod:
        return self._pods[index]

    def __enter__(self) -> PodFleet:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop_all()

    def __repr__(self) -> str:
        kind = "process" if self.processes else "thread"
        return f"<PodFleet port={self.port} {len(self._pods)} {kind} pods>"


def _stop_many(pods: list[Pod], grace: float | None = 0) -> None:
    for pod in pods:
        if isinstance(pod, ProcessPod):
            pod.send_stop(grace)
    for pod in pods:
        pod.stop(grace)
