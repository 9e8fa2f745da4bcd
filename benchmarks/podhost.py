"""Pods with few server workers, in a child process: their latency grows with in-flight calls.

``ProcessPod`` serves with 32 workers, so a sleeping handler never queues at the
loads one client can offer here. A real pod has finite capacity: this host
runs ``ThreadPod`` servers with ``--max-workers`` workers each, so calls past
that many wait in the pod's queue, as they would on a busy pod.

Run as ``python -m benchmarks.podhost --port P --hosts H1,H2 --max-workers W``:
it prints ``READY`` once every pod serves, and stops them all when its
standard input closes (so it never outlives the benchmark).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import select
import subprocess
import sys
import time
from collections.abc import Sequence

from benchmarks.common import ROOT
from grpclb.testing.pods import Pod, ThreadPod

READY_TIMEOUT_S = 20.0


class RemotePod(Pod):
    """A handle on a pod served by another process: its Control service only."""

    def stop(self, grace: float | None = 0) -> None:
        self._forget()


class PodHost:
    """The child process and handles on its pods; a context manager that always stops it."""

    def __init__(self, hosts: Sequence[str], port: int, max_workers: int) -> None:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
        args = ["--port", str(port), "--hosts", ",".join(hosts), "--max-workers", str(max_workers)]
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "benchmarks.podhost", *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=env,
        )
        try:
            self._wait_ready()
        except BaseException:
            self.close()
            raise
        self.pods = [RemotePod(host, port) for host in hosts]

    def _wait_ready(self) -> None:
        assert self._proc.stdout is not None
        fd, line = self._proc.stdout.fileno(), b""
        deadline = time.monotonic() + READY_TIMEOUT_S
        while not line.endswith(b"\n"):
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                raise RuntimeError("pod host not ready in time")
            chunk = os.read(fd, 1)
            if not chunk:
                raise RuntimeError(f"pod host exited with {self._proc.wait(timeout=5)}")
            line += chunk
        if line.strip() != b"READY":
            raise RuntimeError(f"pod host said {line!r}")

    def addresses(self) -> list[str]:
        return [pod.address for pod in self.pods]

    def close(self) -> None:
        for pod in getattr(self, "pods", []):
            pod.stop()
        if self._proc.stdin is not None:
            with contextlib.suppress(OSError):
                self._proc.stdin.close()  # the host stops its pods and exits
        try:
            self._proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait(timeout=5)
        if self._proc.stdout is not None:
            self._proc.stdout.close()

    def __enter__(self) -> PodHost:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.podhost")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--hosts", required=True, help="comma-separated loopback addresses")
    parser.add_argument("--max-workers", type=int, default=2)
    args = parser.parse_args(argv)
    pods: list[ThreadPod] = []
    code = 1
    try:
        for host in args.hosts.split(","):
            pods.append(ThreadPod(host, args.port, max_workers=args.max_workers))
        print("READY", flush=True)
        sys.stdin.read()  # until the benchmark closes it, or dies
        code = 0
    finally:
        for pod in pods:
            with contextlib.suppress(Exception):
                pod.stop(0)
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)  # leftover grpc threads must not delay the exit


if __name__ == "__main__":
    sys.exit(main())
