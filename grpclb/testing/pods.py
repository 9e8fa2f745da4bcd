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
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, NoReturn, TypeVar

import grpc

from grpclb.testing import echo_pb2, echo_pb2_grpc

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


def _format_address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class Pod(abc.ABC):
    """Common handle: steering and reading a pod goes through its Control service.

    The control channel has its own subchannel pool, so it never shares (or
    shows up as) a connection of the channels under test.
    """

    host: str
    port: int
    control_port: int

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port, self.control_port = host, port, port
        self._control: Any = None
        self._channel: Any = None
        self._stopped = False

    @property
    def address(self) -> str:
        return _format_address(self.host, self.port)

    @property
    def control_address(self) -> str:
        return _format_address(self.host, self.control_port)

    def _stub(self) -> Any:
        if self._control is None:
            options = [("grpc.use_local_subchannel_pool", 1)]
            self._channel = grpc.insecure_channel(self.control_address, options=options)
            self._control = echo_pb2_grpc.ControlStub(self._channel)  # type: ignore[no-untyped-call]
        return self._control

    def set_mode(self, mode: str, delay_ms: int = 0) -> None:
        mode_msg = echo_pb2.Mode(mode=mode, delay_ms=delay_ms)
        self._stub().SetMode(mode_msg, timeout=CONTROL_TIMEOUT_S)

    def stats(self) -> PodCounts:
        return _counts(self._stub().GetStats(echo_pb2.Empty(), timeout=CONTROL_TIMEOUT_S))

    def reset_stats(self) -> PodCounts:
        """Resets the counters; returns them as they were, to measure one phase of a test."""
        return _counts(self._stub().ResetStats(echo_pb2.Empty(), timeout=CONTROL_TIMEOUT_S))

    @abc.abstractmethod
    def stop(self, grace: float | None = 0) -> None:
        """Stops serving; in-flight calls get ``grace`` seconds, then are cancelled."""

    def _forget(self) -> None:
        """Closes the control channel and drops the pod from the exit-time cleanup."""
        self._stopped = True
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
    peers = tuple(msg.peers)
    return PodCounts(msg.pod, msg.calls, msg.connections, msg.in_flight, peers)


def _register(pod: Pod) -> None:
    with _live_lock:
        _live.add(pod)


@atexit.register
def _stop_leftovers() -> None:
    with _live_lock:
        leftovers = list(_live)
    for pod in leftovers:
        with contextlib.suppress(Exception):
            if isinstance(pod, ProcessPod):
                pod.kill()
            else:
                pod.stop(0)


class ThreadPod(Pod):
    """A pod served by this process; ``port=0`` picks a free port."""

    def __init__(
        self, host: str, port: int, *, tls: tuple[bytes, bytes] | None = None, max_workers: int = 32
    ) -> None:
        # Imported here so that `python -m grpclb.testing._pod_main` finds it unimported.
        from grpclb.testing._pod_main import serve

        super().__init__(host, port)
        self._server = serve(host, port, tls=tls, max_workers=max_workers)
        self.port, self.control_port = self._server.port, self._server.control_port
        _register(self)

    def stop(self, grace: float | None = 0) -> None:
        if not self._stopped:
            self._forget()
            self._server.stop(grace)


class ProcessPod(Pod):
    """A pod in its own Python process, so that a test can SIGKILL it.

    With ``wait=False`` the constructor only spawns the process; call
    ``wait_ready()`` later, which lets a fleet start many pods at once.
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
        self.name = name or _format_address(host, port)
        self._dir = tempfile.mkdtemp(prefix="grpclb-pod-")
        self._stderr_path = os.path.join(self._dir, "stderr.log")
        self._ready = False
        self._stop_sent = False
        args = ["--host", host, "--port", str(port), "--name", self.name]
        if tls is not None:
            for flag, pem in (("--tls-key", tls[0]), ("--tls-cert", tls[1])):
                path = os.path.join(self._dir, flag.strip("-") + ".pem")
                with open(os.open(path, os.O_WRONLY | os.O_CREAT, 0o600), "wb") as f:
                    f.write(pem)
                args += [flag, path]
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [_PACKAGE_ROOT, env.get("PYTHONPATH")]))
        with open(self._stderr_path, "wb") as stderr:
            self._proc = subprocess.Popen(
                [sys.executable, "-m", "grpclb.testing._pod_main", *args],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=stderr,
                env=env,
                close_fds=True,
            )
        _register(self)
        if wait:
            self.wait_ready(ready_timeout)

    @property
    def pid(self) -> int:
        return int(self._proc.pid)

    def wait_ready(self, timeout: float = READY_TIMEOUT_S) -> None:
        """Waits for the READY line; on failure kills the child and raises with its stderr."""
        if self._ready:
            return
        assert self._proc.stdout is not None
        deadline = time.monotonic() + timeout
        buf = b""
        fd = self._proc.stdout.fileno()
        while b"\n" not in buf:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                self._fail(f"not ready after {timeout:.1f} s")
            chunk = os.read(fd, 4096)
            if not chunk:
                self._fail(f"exited with code {self._proc.wait(timeout=5)}")
            buf += chunk
        words = buf.decode(errors="replace").split()
        if words[:1] != ["READY"]:
            self._fail(f"said {buf!r} instead of READY")
        self.port = int(words[1].rsplit(":", 1)[1])
        self.control_port = self.port
        for word in words[2:]:
            if word.startswith("control="):
                self.control_port = int(word.rsplit(":", 1)[1])
        self._ready = True

    def _fail(self, why: str) -> NoReturn:
        if self._proc.poll() is None:
            self._proc.send_signal(signal.SIGKILL)
            self._proc.wait(timeout=5)
        stderr = Path(self._stderr_path).read_text(errors="replace")
        self.kill()
        raise RuntimeError(f"pod {self.name} {why}; its stderr:\n{stderr[-4000:]}")

    def send_stop(self, grace: float | None = 0) -> None:
        """Asks the pod to stop without waiting, so a fleet stops all pods at once."""
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
            self._proc.kill()
            self._proc.wait(timeout=5)
        self._cleanup()

    def kill(self) -> None:
        """SIGKILLs the pod: no goodbye to clients, its connections just break."""
        self._forget()
        if self._proc.poll() is None:
            self._proc.send_signal(signal.SIGKILL)
            self._proc.wait(timeout=5)
        self._cleanup()

    def _cleanup(self) -> None:
        for pipe in (self._proc.stdin, self._proc.stdout):
            if pipe is not None:
                with contextlib.suppress(OSError):
                    pipe.close()
        shutil.rmtree(self._dir, ignore_errors=True)


def pick_port(hosts: list[str]) -> int:
    """Finds one TCP port free on every host (random, bounded attempts)."""
    rng = random.Random()
    for _ in range(PORT_ATTEMPTS):
        port = rng.randrange(*PORT_RANGE)
        if all(_port_free(host, port) for host in hosts):
            return port
    raise OSError(f"no port in {PORT_RANGE} free on {hosts} after {PORT_ATTEMPTS} tries")


def _port_free(host: str, port: int) -> bool:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        # grpc sets SO_REUSEADDR too: a TIME_WAIT left by an earlier test is no obstacle.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


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
        self._port = pick_port(probe) if port is None else port
        self.add(count)

    @property
    def port(self) -> int:
        return self._port

    @property
    def pods(self) -> list[Pod]:
        return list(self._pods)

    @property
    def addresses(self) -> list[str]:
        return [pod.address for pod in self._pods]

    def add(self, n: int = 1) -> list[Pod]:
        """Starts ``n`` pods on the next hosts; process pods start concurrently."""
        hosts = [_host(self._next + i) for i in range(n)]
        self._next += n
        new: list[Pod] = []
        try:
            for host in hosts:
                if self.processes:
                    new.append(ProcessPod(host, self._port, tls=self.tls, wait=False))
                else:
                    new.append(ThreadPod(host, self._port, tls=self.tls))
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

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop_all()

    def __repr__(self) -> str:
        kind = "process" if self.processes else "thread"
        return f"<PodFleet port={self._port} {len(self._pods)} {kind} pods>"


def _stop_many(pods: list[Pod], grace: float | None = 0) -> None:
    for pod in pods:
        if isinstance(pod, ProcessPod):
            pod.send_stop(grace)
    for pod in pods:
        pod.stop(grace)


def _host(index: int) -> str:
    """The index-th loopback address; index 2 is 127.0.0.2."""
    if not 1 <= index < 2**24 - 1:
        raise ValueError(f"host index {index} is outside 127.0.0.0/8")
    return str(ipaddress.IPv4Address("127.0.0.0") + index)
