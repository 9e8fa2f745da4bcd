"""Many pods on one machine: one grpcio server answering on hundreds of loopback addresses.

A thousand pods as a thousand servers would cost a thousand thread pools. One
server bound to 0.0.0.0 answers on every 127.x.y.z address at once, so a DNS
answer listing many loopback addresses is, to a client, a fleet of that many
distinct pods: each address is its own TCP connection, dialled and watched on
its own. The server cannot tell its "pods" apart, but the kernel can:
``Crowd.connections()`` counts established connections per local address from
``/proc/net/tcp``, which is what a real fleet's pods would each see.
"""

from __future__ import annotations

import ipaddress
import sys
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

from grpclb.testing.pods import ThreadPod, port_is_free

_ESTABLISHED = "01"


def first_free_port(candidates: Iterable[int]) -> int:
    """The first of ``candidates`` free on every address (0 when none is: any port)."""
    return next((p for p in candidates if port_is_free("0.0.0.0", p)), 0)


def loopback_hosts(count: int, first: str = "127.1.0.1") -> list[str]:
    """``count`` consecutive loopback addresses from ``first``, skipping x.y.z.0 and .255."""
    hosts: list[str] = []
    ip = ipaddress.IPv4Address(first)
    while len(hosts) < count:
        if ip not in ipaddress.IPv4Network("127.0.0.0/8"):
            raise ValueError(f"{count} hosts from {first} leave 127.0.0.0/8")
        if int(ip) & 0xFF not in (0, 255):
            hosts.append(str(ip))
        ip += 1
    return hosts


class Crowd:
    """One server on 0.0.0.0 and the loopback hosts that stand for its pods."""

    def __init__(
        self, count: int, *, port: int = 0, first: str = "127.1.0.1", max_workers: int = 16
    ) -> None:
        self.server = ThreadPod("0.0.0.0", port, max_workers=max_workers)
        self.port = self.server.port
        self.hosts = loopback_hosts(count, first)
        self._spare = iter(loopback_hosts(count + 1000, first)[count:])

    @property
    def addresses(self) -> list[str]:
        return [f"{host}:{self.port}" for host in self.hosts]

    def replace(self, index: int) -> tuple[str, str]:
        """A rolling update's step: pod ``index`` leaves, a new address takes its place."""
        old, new = self.hosts[index], next(self._spare)
        self.hosts[index] = new
        return old, new

    def connections(self) -> Counter[str]:
        """Established connections to the server, per local (pod) address."""
        return established_by_local_address(self.port)

    def stop(self) -> None:
        self.server.stop()

    def __enter__(self) -> Crowd:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def established_by_local_address(port: int) -> Counter[str]:
    """Established TCP connections to ``port`` on this machine, per local address.

    grpcio binds 0.0.0.0 as a dual-stack socket, so IPv4 peers show up in
    ``/proc/net/tcp6`` as v4-mapped addresses; both tables are read. Any process's
    server counts, so a benchmark can serve its pods from a child process.
    """
    counts: Counter[str] = Counter()
    wanted = f"{port:04X}"
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            ip_hex, port_hex = fields[1].split(":")
            if port_hex == wanted and fields[3] == _ESTABLISHED:
                counts[_local_ip(ip_hex)] += 1
    return counts


def _local_ip(hex_address: str) -> str:
    """An address of /proc/net/tcp{,6}: 32-bit words in host (little-endian) order."""
    step = -1 if sys.byteorder == "little" else 1
    raw = b"".join(
        bytes.fromhex(hex_address[i : i + 8])[::step] for i in range(0, len(hex_address), 8)
    )
    if len(raw) == 4:
        return str(ipaddress.IPv4Address(raw))
    ip = ipaddress.IPv6Address(raw)
    return str(ip.ipv4_mapped or ip)
