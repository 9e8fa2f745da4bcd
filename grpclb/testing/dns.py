"""A real DNS server on loopback, answering like a headless service.

The library must resolve names with a real resolver against a real server:
TTLs, NXDOMAIN, a server that stops answering. dnsmasq does this with a hosts
file that it re-reads on SIGHUP, so a test changes the pod set in
milliseconds; ``set_records`` then waits until the server answers the new set,
so tests never race the reload.
"""

from __future__ import annotations

import atexit
import contextlib
import ipaddress
import os
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import dns.exception
import dns.message
import dns.query
import dns.rcode
import dns.rdatatype

from grpclb.testing._pod_main import format_address
from grpclb.testing.pods import pick_port, port_is_free

# The name tests give their fleet: what a headless service "echo" in "default" resolves as.
SERVICE_NAME = "echo.default.svc.cluster.local"
READY_TIMEOUT_S = 10.0
RELOAD_TIMEOUT_S = 5.0
POLL_S = 0.005
PORT_ATTEMPTS = 20
SETUP_HINT = "run the project's setup (scripts/setup.sh installs Debian's dnsmasq-base)"


_running: set[DnsServer] = set()


@atexit.register
def _stop_leftovers() -> None:
    """A test run that forgot a server must not leave dnsmasq behind."""
    for server in list(_running):
        with contextlib.suppress(Exception):
            server.stop()


class DnsmasqNotFound(RuntimeError):
    """dnsmasq is a system package, not a Python one; say how to get it."""


class DnsServer:
    """dnsmasq answering for names under ``LOCAL_DOMAINS`` from records set by the test.

    Names under those domains that have no records get an authoritative
    NXDOMAIN at once instead of being forwarded (there is nowhere to forward).
    """

    # dnsmasq answers NXDOMAIN itself for absent names under these (its --local).
    LOCAL_DOMAINS: tuple[str, ...] = ("cluster.local", "test")

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int | None = None,
        ttl: int = 1,
        dnsmasq: str | None = None,
    ) -> None:
        found = dnsmasq or shutil.which("dnsmasq") or shutil.which("dnsmasq", path="/usr/sbin")
        if not found or not os.access(found, os.X_OK):
            raise DnsmasqNotFound(f"dnsmasq not found ({dnsmasq or 'not on PATH'}); {SETUP_HINT}")
        self.dnsmasq = found
        self._host, self._port, self.ttl = host, port, ttl
        self._records: dict[str, list[str]] = {}
        self._proc: subprocess.Popen[bytes] | None = None
        self._dir: str | None = None
        self._lock = threading.Lock()

    @property
    def host(self) -> str:
        return self._host

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError("DnsServer has no port until start()")
        return self._port

    @property
    def authority(self) -> str:
        """``host:port`` of this server, as a DNS authority in a gRPC target."""
        return format_address(self._host, self.port)

    def target(self, name: str, port: int) -> str:
        """A ``dns://`` target that makes gRPC's own resolver ask this server."""
        return f"dns://{self.authority}/{name}:{port}"

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self) -> None:
        """Starts dnsmasq; a port chosen here is retried if another process takes it first."""
        with self._lock:
            if self.running:
                return
            self._remove_dir()
            self._dir = tempfile.mkdtemp(prefix="grpclb-dns-")
            self._write_hosts()
            attempts = PORT_ATTEMPTS if self._port is None else 3
            errors = []
            for _ in range(attempts):
                port = self._port if self._port is not None else pick_port([self._host], udp=True)
                # dnsmasq itself would share a UDP port with another dnsmasq; refuse instead.
                if not port_is_free(self._host, port, udp=True):
                    errors.append(f"port {port} is in use")
                    time.sleep(0.1)
                    continue
                error = self._spawn(port)
                if error is None:
                    self._port = port
                    _running.add(self)
                    return
                errors.append(error)
            self._remove_dir()
        raise RuntimeError(f"dnsmasq did not start on {self._host}: {errors[-1]}")

    def _spawn(self, port: int) -> str | None:
        """Runs dnsmasq on ``port``; returns why it failed, or None once it answers."""
        assert self._dir is not None
        log = os.path.join(self._dir, "dnsmasq.log")
        with open(log, "wb") as out:
            proc = subprocess.Popen(
                [self.dnsmasq, *self._flags(port)],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=out,
                close_fds=True,
            )
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                return Path(log).read_text(errors="replace").strip()
            if _query(self._host, port, "ready.probe.test", "A", timeout=0.05) is not None:
                self._proc = proc
                return None
            time.sleep(POLL_S)
        proc.kill()
        proc.wait(timeout=5)
        return f"no answer within {READY_TIMEOUT_S} s"

    def _flags(self, port: int) -> list[str]:
        assert self._dir is not None
        flags = [
            "--keep-in-foreground",  # we own its lifetime; no daemon to hunt down
            "--conf-file=/dev/null",  # never the machine's /etc/dnsmasq.conf
            f"--port={port}",
            f"--listen-address={self._host}",
            "--bind-interfaces",  # bind only that address, not the wildcard
            "--no-resolv",  # no upstream servers: nothing leaves the machine
            "--no-hosts",  # not /etc/hosts: only the records a test set
            f"--addn-hosts={self._hosts_path()}",  # re-read on SIGHUP
            f"--local-ttl={self.ttl}",
            "--pid-file=",  # none
            "--log-facility=-",  # stderr, into our log file; only start-up and reloads
        ]
        flags += [f"--local=/{domain}/" for domain in self.LOCAL_DOMAINS]
        if os.geteuid() == 0:
            flags.append("--user=root")  # else it drops to nobody, who cannot read our files
        return flags

    def _hosts_path(self) -> str:
        assert self._dir is not None
        return os.path.join(self._dir, "hosts")

    def _write_hosts(self) -> None:
        lines = [f"{addr} {name}\n" for name, addrs in self._records.items() for addr in addrs]
        tmp = self._hosts_path() + ".tmp"
        Path(tmp).write_text("".join(lines))
        os.replace(tmp, self._hosts_path())  # dnsmasq never reads half a file

    def set_records(self, name: str, addresses: Sequence[str], *, wait: bool = True) -> None:
        """Replaces ``name``'s A/AAAA records; ``[]`` makes the name NXDOMAIN.

        Returns once the server answers the new set (bounded wait); while the
        server is stopped the records are kept for the next start. ``wait=False``
        returns once dnsmasq is told to reload: a benchmark replacing pods in a big
        fleet must not spend its own CPU parsing answers of a thousand records.
        """
        name = name.rstrip(".").lower()
        if not name or any(c.isspace() or c == "#" for c in name):
            raise ValueError(f"not a DNS name: {name!r}")  # it would corrupt the hosts file
        addrs = [str(ipaddress.ip_address(a)) for a in addresses]
        with self._lock:
            if addrs:
                self._records[name] = addrs
            else:
                self._records.pop(name, None)
            if self._dir is None:
                return
            self._write_hosts()
            if not self.running:
                return
            assert self._proc is not None
            self._proc.send_signal(signal.SIGHUP)
            if not wait:
                return
            # An empty set must read as NXDOMAIN (None), not as an empty answer.
            want = _sorted_addresses(addrs) or None
            deadline = time.monotonic() + RELOAD_TIMEOUT_S
            got: list[str] | None = []
            while time.monotonic() < deadline:
                with contextlib.suppress(TimeoutError):
                    got = self.lookup(name, timeout=0.5)
                    if got == want:
                        return
                time.sleep(POLL_S)
        raise TimeoutError(f"dnsmasq still answers {got} for {name}, not {want}")

    def records(self) -> dict[str, list[str]]:
        with self._lock:
            return {name: list(addrs) for name, addrs in self._records.items()}

    def lookup(self, name: str, timeout: float = 1.0) -> list[str] | None:
        """Asks this server for A and AAAA of ``name``: sorted addresses, or None on NXDOMAIN.

        Raises ``TimeoutError`` when the server does not answer.
        """
        found: list[str] = []
        for rdtype in ("A", "AAAA"):
            reply = _query(self._host, self.port, name, rdtype, timeout=timeout)
            if reply is None:
                raise TimeoutError(f"no DNS answer from {self.authority} in {timeout} s")
            if reply.rcode() == dns.rcode.NXDOMAIN:
                return None
            found += [rr.to_text() for rrset in reply.answer for rr in rrset]
        return _sorted_addresses(found)

    def stop(self) -> None:
        """Stops dnsmasq; queries then time out, as when a cluster's DNS is down."""
        with self._lock:
            _running.discard(self)
            proc, self._proc = self._proc, None
            if proc is not None:
                proc.terminate()
                try:
                    proc.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(timeout=5)
            self._remove_dir()

    def restart(self) -> None:
        """Stops and starts again on the same port with the same records."""
        self.stop()
        self.start()

    def _remove_dir(self) -> None:
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None

    def __enter__(self) -> DnsServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        where = self.authority if self._port is not None else self._host
        return f"<DnsServer {where} {state}, {len(self._records)} names>"


def _query(
    host: str, port: int, name: str, rdtype: str, timeout: float
) -> dns.message.Message | None:
    """One query over UDP, again over TCP when the answer is truncated (a big fleet's
    answer does not fit a datagram); None when nothing answers in time."""
    query = dns.message.make_query(name, dns.rdatatype.from_text(rdtype))
    try:
        return dns.query.udp_with_fallback(query, host, port=port, timeout=timeout)[0]
    except (dns.exception.Timeout, ConnectionRefusedError):
        return None


def _sorted_addresses(addresses: Sequence[str]) -> list[str]:
    """Distinct addresses, IPv4 first, each family in numeric order."""
    ips = {ipaddress.ip_address(a) for a in addresses}
    return [str(ip) for ip in sorted(ips, key=lambda ip: (ip.version, int(ip)))]
