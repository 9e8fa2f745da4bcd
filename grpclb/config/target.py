"""Target names, as gRPC's naming document spells them.

- ``dns:///host:port``: resolve ``host`` with the system's resolver settings;
- ``dns://SERVER_IP[:PORT]/host:port``: ask that DNS server (port 53 by default);
- ``host:port``: the same as ``dns:///host:port``;
- ``ipv4:a:p,b:p`` and ``ipv6:[a]:p,[b]:p``: a fixed list of pods.

The port is required: a headless service has no default port to guess.

Names are checked as DNS names at creation, so a typo fails at once rather
than as UNAVAILABLE on every call: "labels must follow the rules for ARPANET
host names [...] letters, digits, and hyphen" - RFC 1035 §2.3.1; 63 octets per
label and 255 per name on the wire (§2.3.4), which is 253 characters of text.
"""

from __future__ import annotations

import ipaddress
import re
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


MAX_NAME_LENGTH = 253  # 255 octets on the wire, less the length octet and the root label
MAX_LABEL_LENGTH = 63
_LABEL = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?")
_SCOPE = re.compile(r"[A-Za-z0-9_.-]+")  # an IPv6 zone: an interface name or index
_NAME_RULE = (
    f"a DNS name is labels of 1-{MAX_LABEL_LENGTH} ASCII letters, digits and hyphens, "
    f"not starting or ending with a hyphen, separated by dots, at most {MAX_NAME_LENGTH} "
    "characters in all"
)
_PORT_RULE = "a port is ASCII digits from 1 to 65535"


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
    # str.isdigit() also accepts fullwidth digits and "²" (U+00B2): only ASCII makes a port.
    if not (port_text.isascii() and port_text.isdigit()) or not 0 < int(port_text) < 65536:
        raise _fail(text, f"port {port_text!r} is invalid: {_PORT_RULE}")
    return host, int(port_text)


def _check_dns_name(text: str, host: str) -> str:
    """The name without its trailing dot; ConfigError naming the broken rule otherwise."""
    name = host[:-1] if host.endswith(".") else host
    if not name:
        raise _fail(text, f"the host {host!r} is not a DNS name: {_NAME_RULE}")
    if len(name) > MAX_NAME_LENGTH:
        raise _fail(
            text,
            f"the host is {len(name)} characters long, more than {MAX_NAME_LENGTH}: {_NAME_RULE}",
        )
    for label in name.split("."):
        if not label:
            why = "has an empty label (two dots in a row, or a leading dot)"
        elif len(label) > MAX_LABEL_LENGTH:
            why = f"has a label of {len(label)} characters, more than {MAX_LABEL_LENGTH}"
        elif not label.isascii() or not _LABEL.fullmatch(label):
            why = f"has the label {label!r}"
            if not label.isascii():
                why += " (write international names in their IDNA 'xn--' form)"
        else:
            continue
        raise _fail(text, f"the host {_short(host)!r} {why}: {_NAME_RULE}")
    return name


def _short(host: str) -> str:
    return host if len(host) <= 80 else host[:40] + "..." + host[-20:]


def _ip(text: str, host: str, version: int) -> str:
    address = _ip_literal(text, host)
    if address is None or address.version != version:
        raise _fail(text, f"{host!r} is not an IPv{version} address")
    return str(address)


def _ip_literal(text: str, host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """The host as an IP address, or None when it is not one (so it must be a DNS name)."""
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return None
    scope = getattr(address, "scope_id", None)
    if scope is not None and not (scope.isascii() and _SCOPE.fullmatch(scope)):
        # Python accepts any text after '%'; grpcio needs an interface name or index.
        raise _fail(text, f"the IPv6 zone {scope!r} is not an interface name or number")
    return address


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
            if _ip_literal(text, server_host) is None:
                raise _fail(text, f"the DNS server {server_host!r} must be an IP address")
            dns_server = (server_host, server_port)
    elif "://" in text:
        raise _fail(text, f"scheme {text.split('://')[0]!r} is not supported")
    else:
        hostport = text
    host, port = _split_host_port(text, hostport)
    literal = _ip_literal(text, host)
    if literal is None:
        return Target(text, _check_dns_name(text, host), port, dns_server=dns_server)
    # An IP literal needs no resolution: a fixed list of one.
    return Target(text, host, port, static_addresses=(format_address(str(literal), port),))
