"""Target names, as gRPC's naming document spells them.

- ``dns:///host:port``: resolve ``host`` with the system's resolver settings;
- ``dns://SERVER_IP[:PORT]/host:port``: ask that DNS server (port 53 by default);
- ``host:port``: the same as ``dns:///host:port``;
- ``ipv4:a:p,b:p`` and ``ipv6:[a]:p,[b]:p``: a fixed list of pods.

The port is required: a headless service has no default port to guess.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from grpclb.errors import ConfigError


@dataclass(frozen=True)
class Target:
    """A parsed target: a DNS name to resolve, or a static list of addresses."""

    text: str
    host: str
    port: int
    dns_server: tuple[str, int] | None = None
    static_addresses: tuple[str, ...] = ()

    @property
    def is_static(self) -> bool:
        return bool(self.static_addresses)

    @property
    def authority(self) -> str:
        """The ``:authority`` of calls: the service's name, not a pod's IP."""
        return format_address(self.host, self.port)


def format_address(ip: str, port: int) -> str:
    """``ip:port``, with brackets for IPv6, as grpcio targets and peers spell it."""
    return f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"


def _fail(text: str, why: str) -> ConfigError:
    return ConfigError(
        f"target {text!r} is invalid: {why}; expected 'dns:///host:port', "
        "'dns://DNS_IP:PORT/host:port', 'host:port', 'ipv4:a:p,b:p' or 'ipv6:[a]:p,[b]:p'"
    )


def _split_host_port(
    text: str, hostport: str, *, default_port: int | None = None
) -> tuple[str, int]:
    if hostport.startswith("["):
        host, sep, rest = hostport[1:].partition("]")
        if not sep:
            raise _fail(text, f"unclosed '[' in {hostport!r}")
        if not rest:
            port_text = None
        elif rest.startswith(":"):
            port_text = rest[1:]
        else:
            raise _fail(text, f"unexpected {rest!r} after ']'")
    elif hostport.count(":") > 1:
        raise _fail(text, f"IPv6 address {hostport!r} must be in brackets, as [addr]:port")
    else:
        host, sep, port_text_or_empty = hostport.partition(":")
        port_text = port_text_or_empty if sep else None
    if not host:
        raise _fail(text, "the host is empty")
    if port_text is None:
        if default_port is None:
            raise _fail(text, f"{hostport!r} has no port")
        return host, default_port
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise _fail(text, f"port {port_text!r} is not a number from 1 to 65535")
    return host, int(port_text)


def _ip(text: str, host: str, version: int) -> str:
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        raise _fail(text, f"{host!r} is not an IPv{version} address") from None
    if address.version != version:
        raise _fail(text, f"{host!r} is not an IPv{version} address")
    return str(address)


def parse_target(text: str) -> Target:
    """Parse a target, or raise ConfigError saying what is wrong with it."""
    if not isinstance(text, str) or not text.strip():
        raise _fail(str(text), "it is empty")
    text = text.strip()
    for scheme, version in (("ipv4:", 4), ("ipv6:", 6)):
        if text.startswith(scheme):
            addresses = []
            for item in text[len(scheme) :].split(","):
                host, port = _split_host_port(text, item.strip())
                addresses.append(format_address(_ip(text, host, version), port))
            first_host, first_port = _split_host_port(
                text, text[len(scheme) :].split(",")[0].strip()
            )
            return Target(text, first_host, first_port, static_addresses=tuple(addresses))
    dns_server = None
    if text.startswith("dns:"):
        rest = text[len("dns:") :]
        if not rest.startswith("//"):
            rest = "///" + rest.lstrip("/") if rest.startswith("/") else "///" + rest
        authority, slash, hostport = rest[2:].partition("/")
        if not slash:
            raise _fail(text, "expected 'dns:///host:port'")
        if authority:
            server_host, server_port = _split_host_port(text, authority, default_port=53)
            try:
                ipaddress.ip_address(server_host)
            except ValueError:
                raise _fail(text, f"the DNS server {server_host!r} must be an IP address") from None
            dns_server = (server_host, server_port)
    elif "://" in text:
        raise _fail(text, f"scheme {text.split('://')[0]!r} is not supported")
    else:
        hostport = text
    host, port = _split_host_port(text, hostport)
    try:
        literal = ipaddress.ip_address(host)
    except ValueError:
        return Target(text, host.rstrip(".") or host, port, dns_server=dns_server)
    # An IP literal needs no resolution: a fixed list of one.
    return Target(text, host, port, static_addresses=(format_address(str(literal), port),))
