"""DNS resolution of a headless service's name into pod addresses.

A headless Service answers its name with one A/AAAA record per ready pod.
Three outcomes must be told apart, because they call for opposite actions:

- records: the new pod set;
- a confirmed empty answer (NXDOMAIN, or no A and no AAAA records): the
  service has no pods now, so the endpoint set empties;
- a failure (timeout, SERVFAIL, unreachable server): say nothing about the
  pods, so the last good set is kept.

Before DNS, the hosts file is read, as the system resolver does ("hosts:
files dns" in nsswitch.conf): ``localhost`` and Kubernetes ``hostAliases``
names live there, and DNS servers do not know them. A name found there is
answered from the file alone; the file is read again whenever it changes.
A target that names its DNS server (``dns://SERVER/name``) asks that server only.

The query logic is shared; only the two ``resolve`` drivers (blocking and
asyncio) differ.
"""

from __future__ import annotations

import ipaddress
import logging
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import dns.asyncresolver
import dns.exception
import dns.nameserver
import dns.rdatatype
import dns.resolver

from grpclb.config.target import Target, format_address

_FAMILIES = (dns.rdatatype.A, dns.rdatatype.AAAA)
log = logging.getLogger("grpclb")


@dataclass(frozen=True)
class Resolution:
    """What one resolution said about the pod set."""

    addresses: tuple[str, ...] | None
    """The pods, sorted; () when DNS confirmed there are none; None on failure."""
    ttl: float | None = None
    """The smallest TTL of the answer's records, when there were records."""
    error: str = ""
    """Why the resolution failed, or why the set is empty."""
    source: str = "dns"
    """Where the answer came from: "dns", "hosts" (the hosts file) or "static" (the target)."""

    @property
    def failed(self) -> bool:
        return self.addresses is None


class _Empty:
    """A family that DNS confirmed has no records."""


_EMPTY = _Empty()
_Outcome = dns.resolver.Answer | _Empty | Exception


def _configure(resolver: dns.resolver.Resolver, target: Target, timeout: float) -> bool:
    """Point the resolver at the target's server; return whether search domains apply."""
    resolver.lifetime = timeout
    resolver.timeout = timeout
    resolver.cache = None  # TTLs are honoured by when we ask, not by a cache
    if target.dns_server is not None:
        ip, port = target.dns_server
        resolver.nameservers = [dns.nameserver.Do53Nameserver(ip, port)]
        resolver.search = []
        return False
    # Short Kubernetes names ("svc.ns") need the pod's search domains.
    return True


def _new_resolver(cls: Any, target: Target) -> Any:
    try:
        return cls(configure=target.dns_server is None)
    except dns.resolver.NoResolverConfiguration:
        return cls(configure=False)


def _interpret(target: Target, outcomes: Sequence[_Outcome]) -> Resolution:
    addresses: set[str] = set()
    ttls: list[float] = []
    errors: list[str] = []
    for family, outcome in zip(_FAMILIES, outcomes, strict=True):
        if isinstance(outcome, dns.resolver.Answer):
            if outcome.rrset is not None:
                ttls.append(outcome.rrset.ttl)
                addresses.update(format_address(r.address, target.port) for r in outcome.rrset)
        elif isinstance(outcome, Exception):
            errors.append(f"{dns.rdatatype.to_text(family)}: {_describe(outcome)}")
    if addresses:
        # One family answering is enough: many servers fail AAAA for v4-only names.
        return Resolution(tuple(sorted(addresses)), ttl=min(ttls) if ttls else None)
    if errors:
        return Resolution(None, error=f"DNS lookup of {target.host!r} failed ({'; '.join(errors)})")
    return Resolution((), error=f"DNS has no A or AAAA records for {target.host!r}")


def _describe(exc: Exception) -> str:
    if isinstance(exc, dns.exception.Timeout):
        return "timed out"
    if isinstance(exc, dns.resolver.NoNameservers):
        return "no DNS server answered"
    return f"{type(exc).__name__}: {exc}"


def _classify(exc: Exception) -> _Outcome:
    if isinstance(exc, dns.resolver.NXDOMAIN | dns.resolver.NoAnswer):
        return _EMPTY
    return exc


class HostsFile:
    """A hosts file (``/etc/hosts``), parsed again whenever it changes.

    Each resolution costs one ``stat``; the file is read and parsed only when
    its inode, size or modification time differ from the last read, so an edit
    (or Kubernetes rewriting it) is seen at the next resolution. A missing or
    unreadable file is an empty one, as it is for the system resolver.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self._key: tuple[int, int, int] | None = None
        self._names: dict[str, tuple[str, ...]] = {}

    def lookup(self, name: str) -> tuple[str, ...]:
        """The IP addresses the file lists for ``name`` (any case), in file order."""
        self._refresh()
        return self._names.get(name.lower().rstrip("."), ())

    def _refresh(self) -> None:
        try:
            info = os.stat(self.path)
        except OSError:
            self._key, self._names = None, {}
            return
        key = (info.st_ino, info.st_size, info.st_mtime_ns)
        if key == self._key:
            return
        try:
            with open(self.path, encoding="utf-8", errors="replace") as file:
                text = file.read()
        except OSError as exc:
            log.debug("grpclb: cannot read %s: %s", self.path, exc)
            self._key, self._names = None, {}
            return
        self._key, self._names = key, parse_hosts(text)


def parse_hosts(text: str) -> dict[str, tuple[str, ...]]:
    """Name -> addresses from hosts(5) text: "IP_address canonical_hostname [aliases...]".

    Names are matched without regard to case; a name on several lines has all
    their addresses, and a line whose first field is not an IP address is skipped.
    """
    names: dict[str, list[str]] = {}
    for line in text.splitlines():
        fields = line.split("#", 1)[0].split()
        if len(fields) < 2:
            continue
        try:
            address = str(ipaddress.ip_address(fields[0]))
        except ValueError:
            continue
        for name in fields[1:]:
            found = names.setdefault(name.lower().rstrip("."), [])
            if address not in found:
                found.append(address)
    return {name: tuple(addresses) for name, addresses in names.items()}


def _from_hosts(target: Target, hosts: HostsFile | None) -> Resolution | None:
    """The hosts file's answer for the target's name, or None: ask DNS."""
    if hosts is None or target.dns_server is not None:
        return None
    found = hosts.lookup(target.host)
    if not found:
        return None
    addresses = sorted({format_address(ip, target.port) for ip in found})
    return Resolution(tuple(addresses), source="hosts")


class Resolver:
    """Blocking resolution of one target."""

    def __init__(self, target: Target, timeout: float, hosts_file: str | None = None) -> None:
        self.target = target
        self._resolver = _new_resolver(dns.resolver.Resolver, target)
        self._search = _configure(self._resolver, target, timeout)
        self._hosts = HostsFile(hosts_file) if hosts_file else None

    def resolve(self) -> Resolution:
        if self.target.is_static:
            return Resolution(self.target.static_addresses, source="static")
        from_hosts = _from_hosts(self.target, self._hosts)
        if from_hosts is not None:
            return from_hosts
        outcomes: list[_Outcome] = []
        for family in _FAMILIES:
            try:
                outcomes.append(
                    self._resolver.resolve(self.target.host, family, search=self._search)
                )
            except dns.exception.DNSException as exc:
                outcomes.append(_classify(exc))
                if isinstance(exc, dns.resolver.NXDOMAIN | dns.exception.Timeout):
                    break  # the name does not exist, or the server is silent: AAAA won't help
        outcomes += [_EMPTY] * (len(_FAMILIES) - len(outcomes))
        return _interpret(self.target, outcomes)


class AsyncResolver:
    """asyncio resolution of one target: the same questions, asked without blocking."""

    def __init__(self, target: Target, timeout: float, hosts_file: str | None = None) -> None:
        self.target = target
        self._resolver = _new_resolver(dns.asyncresolver.Resolver, target)
        self._search = _configure(self._resolver, target, timeout)
        self._hosts = HostsFile(hosts_file) if hosts_file else None

    async def resolve(self) -> Resolution:
        if self.target.is_static:
            return Resolution(self.target.static_addresses, source="static")
        # A stat, and a read of a few hundred bytes when the file changed: on the loop.
        from_hosts = _from_hosts(self.target, self._hosts)
        if from_hosts is not None:
            return from_hosts
        resolver = self._resolver
        assert isinstance(resolver, dns.asyncresolver.Resolver)
        outcomes: list[_Outcome] = []
        for family in _FAMILIES:
            try:
                outcomes.append(
                    await resolver.resolve(self.target.host, family, search=self._search)
                )
            except dns.exception.DNSException as exc:
                outcomes.append(_classify(exc))
                if isinstance(exc, dns.resolver.NXDOMAIN | dns.exception.Timeout):
                    break
        outcomes += [_EMPTY] * (len(_FAMILIES) - len(outcomes))
        return _interpret(self.target, outcomes)


class RefreshSchedule:
    """When to resolve next: on the interval, sooner on TTL expiry or on request.

    A request (a connection was lost, one was recycled) is honoured no sooner
    than ``dns_min_refresh_interval`` after the last resolution, so a fleet of
    failing connections cannot turn into a DNS storm.
    """

    def __init__(self, interval: float, minimum: float, respect_ttl: bool) -> None:
        self.interval, self.minimum, self.respect_ttl = interval, minimum, respect_ttl
        self.next_at = -math.inf
        self.last_at = -math.inf

    def due_at(self, requested: bool) -> float:
        return min(self.next_at, self.last_at + self.minimum) if requested else self.next_at

    def started(self, now: float) -> None:
        self.last_at = now

    def finished(self, resolution: Resolution, now: float) -> None:
        self.next_at = now + next_refresh_delay(
            resolution, self.interval, self.minimum, self.respect_ttl
        )


def next_refresh_delay(
    resolution: Resolution, interval: float, minimum: float, respect_ttl: bool
) -> float:
    """Seconds until the next resolution: the interval, or sooner when the TTL runs out."""
    delay = interval
    if respect_ttl and resolution.ttl is not None and not math.isnan(resolution.ttl):
        delay = min(delay, resolution.ttl)
    return max(delay, minimum)
