"""nginx and HAProxy as the proxy hop a user would put in front of the pods.

Each proxy runs in the foreground in its own session, from a configuration
file in a temporary directory, listening on one loopback port: no system
service, nothing outside the run. Its CPU time is read from ``/proc/<pid>/stat``
of every process in its process group (nginx's workers are processes,
HAProxy's are threads of one process, whose ``stat`` counts them all).

``scripts/bench.sh`` installs Debian's packages when missing and exports
``BENCHMARK_PROXY_DIR``; a proxy writes its process group id there, so the
script's exit trap can stop it even if this process is killed outright.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path

from benchmarks.common import wait_until

PROXY_DIR_ENV = "BENCHMARK_PROXY_DIR"
LISTEN_HOST = "127.0.0.1"  # the pods are on 127.0.0.2 and up
READY_TIMEOUT_S = 15.0
STOP_TIMEOUT_S = 5.0
# Long-lived connections on both sides, as a gRPC deployment configures them: nginx's
# default keepalive_requests (1000) would close the client's and each pod's connection
# every 1000 calls, a reconnect cost no long-lived proxy deployment pays.
MANY_REQUESTS = 1_000_000


def binary(name: str) -> str | None:
    """The proxy's executable: on the PATH, or in /usr/sbin (not on a user's PATH)."""
    found = shutil.which(name)
    if found:
        return found
    fallback = Path("/usr/sbin") / name
    return str(fallback) if os.access(fallback, os.X_OK) else None


def nginx_config(workdir: Path, port: int, upstreams: Sequence[str]) -> str:
    """nginx in front of ``upstreams``: ``grpc_pass`` to a ``least_conn`` upstream group."""
    servers = "".join(f"        server {address};\n" for address in upstreams)
    temp = "".join(
        f"    {kind}_temp_path {workdir / kind};\n"
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    return (
        "daemon off;\n"
        "master_process on;\n"
        "worker_processes auto;\n"
        f"pid {workdir / 'nginx.pid'};\n"
        f"error_log {workdir / 'nginx-error.log'} warn;\n"
        "events { worker_connections 1024; }\n"
        "http {\n"
        "    access_log off;\n"
        f"{temp}"
        f"    keepalive_requests {MANY_REQUESTS};\n"
        "    keepalive_timeout 300s;\n"
        "    upstream pods {\n"
        "        least_conn;\n"
        f"{servers}"
        # Without keepalive, nginx opens a new connection to a pod for every call.
        "        keepalive 32;\n"
        f"        keepalive_requests {MANY_REQUESTS};\n"
        "        keepalive_timeout 300s;\n"
        "    }\n"
        "    server {\n"
        f"        listen {LISTEN_HOST}:{port} http2;\n"
        "        location / { grpc_pass grpc://pods; }\n"
        "    }\n"
        "}\n"
    )


def haproxy_config(workdir: Path, port: int, upstreams: Sequence[str]) -> str:
    """HAProxy in front of ``upstreams``: HTTP/2 on both sides, ``balance leastconn``."""
    servers = "".join(
        f"    server pod{i} {address} proto h2\n" for i, address in enumerate(upstreams, 1)
    )
    return (
        "global\n"
        f"    pidfile {workdir / 'haproxy.pid'}\n"
        "    maxconn 4096\n"
        "defaults\n"
        "    mode http\n"
        "    timeout connect 5s\n"
        "    timeout client 300s\n"
        "    timeout server 300s\n"
        "frontend grpc\n"
        f"    bind {LISTEN_HOST}:{port} proto h2\n"
        "    default_backend pods\n"
        "backend pods\n"
        "    balance leastconn\n"
        f"{servers}"
    )


def _group_stats(pgid: int, proc: Path) -> dict[int, list[str]]:
    """``/proc/<pid>/stat`` fields from the state on, for every live process of the group."""
    found = {}
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:  # ended since the listing
            continue
        # The command name (field 2) may hold spaces and parentheses: split after its end.
        fields = stat[stat.rindex(")") + 2 :].split()
        if int(fields[2]) == pgid:  # proc(5): state is field 3, pgrp field 5
            found[int(entry.name)] = fields
    return found


def group_members(pgid: int, proc: Path = Path("/proc")) -> list[int]:
    """The ids of the live processes in process group ``pgid``, in ascending order."""
    return sorted(_group_stats(pgid, proc))


def group_cpu_seconds(pgid: int, proc: Path = Path("/proc")) -> float:
    """User plus system CPU seconds of every live process in process group ``pgid``."""
    # proc(5): utime is field 14 and stime field 15, in clock ticks.
    ticks = sum(int(f[11]) + int(f[12]) for f in _group_stats(pgid, proc).values())
    return ticks / os.sysconf("SC_CLK_TCK")


def version(name: str, path: str) -> str:
    """``nginx 1.22.1``: the first version number the binary's ``-v`` prints."""
    done = subprocess.run([path, "-v"], capture_output=True, text=True, timeout=10, check=False)
    # "nginx version: nginx/1.22.1" (stderr); "HAProxy version 2.6.12-1+deb12u4 2023/..."
    found = re.search(r"version:? (?:nginx/)?(\S+)", done.stdout + done.stderr)
    return f"{name} {found.group(1) if found else '(version unknown)'}"


class Proxy:
    """One proxy process group on ``LISTEN_HOST:port``; a context manager that stops it."""

    def __init__(self, name: str, command: Sequence[str], workdir: Path, port: int) -> None:
        self.name, self.port, self._workdir = name, port, workdir
        self._log = workdir / f"{name}.out"
        with open(self._log, "wb") as out:
            # Its own session: one signal to the group reaches nginx's workers too.
            self._proc = subprocess.Popen(
                list(command),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self._pgid_file = self._record_group()
        try:
            wait_until(self._listening, READY_TIMEOUT_S, f"{name} listening on port {port}")
        except BaseException:
            self.close()
            raise

    @property
    def address(self) -> str:
        return f"{LISTEN_HOST}:{self.port}"

    @property
    def pid(self) -> int:
        return int(self._proc.pid)

    def cpu_seconds(self) -> float:
        """CPU time of the proxy so far, every worker process and thread included."""
        return group_cpu_seconds(self.pid)

    def _record_group(self) -> Path | None:
        shared = os.environ.get(PROXY_DIR_ENV)
        if not shared or not Path(shared).is_dir():
            return None
        path = Path(shared) / f"{self.name}-{self.pid}.pgid"
        path.write_text(str(self.pid))
        return path

    def _listening(self) -> bool:
        if self._proc.poll() is not None:
            output = self._log.read_text(errors="replace")[-2000:]
            raise RuntimeError(f"{self.name} exited with {self._proc.returncode}:\n{output}")
        with socket.socket() as sock:
            sock.settimeout(0.5)
            return sock.connect_ex((LISTEN_HOST, self.port)) == 0

    def close(self) -> None:
        """SIGTERM to the group, SIGKILL if it outlives ``STOP_TIMEOUT_S``."""
        for sig in (signal.SIGTERM, signal.SIGKILL):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.pid, sig)
            try:
                self._proc.wait(timeout=STOP_TIMEOUT_S)
                break
            except subprocess.TimeoutExpired:
                continue
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.pid, signal.SIGKILL)  # workers that outlived their master
        if self._pgid_file is not None:
            self._pgid_file.unlink(missing_ok=True)

    def __enter__(self) -> Proxy:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Proxies:
    """nginx and HAProxy in front of the same pods, in one temporary directory."""

    def __init__(self, upstreams: Sequence[str], ports: Sequence[int]) -> None:
        nginx, haproxy = binary("nginx"), binary("haproxy")
        if nginx is None or haproxy is None:
            raise RuntimeError(
                "nginx and haproxy are needed (Debian: nginx-light, haproxy); "
                "scripts/bench.sh installs them"
            )
        # Inside bench.sh's directory when there is one, which its exit trap removes.
        shared = os.environ.get(PROXY_DIR_ENV)
        parent = shared if shared and Path(shared).is_dir() else None
        self._dir = Path(tempfile.mkdtemp(prefix="grpclb-proxies-", dir=parent))
        self._dir.chmod(0o755)  # nginx's workers may run as nobody
        self.versions = [version("nginx", nginx), version("HAProxy", haproxy)]
        self.all: list[Proxy] = []
        try:
            conf = self._dir / "nginx.conf"
            conf.write_text(nginx_config(self._dir, ports[0], upstreams))
            command = [
                nginx,
                "-p",
                str(self._dir),
                "-c",
                str(conf),
                "-e",
                str(self._dir / "nginx-start.log"),
            ]
            self.all.append(Proxy("nginx", command, self._dir, ports[0]))
            conf = self._dir / "haproxy.cfg"
            conf.write_text(haproxy_config(self._dir, ports[1], upstreams))
            self.all.append(
                Proxy("haproxy", [haproxy, "-db", "-f", str(conf)], self._dir, ports[1])
            )
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        for proxy in self.all:
            proxy.close()
        shutil.rmtree(self._dir, ignore_errors=True)

    def __enter__(self) -> Proxies:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
