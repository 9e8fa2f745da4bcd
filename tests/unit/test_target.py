"""Target names: every form of gRPC's naming document that grpclb accepts, and the rest.

Rows are (target text, want) for the good forms and (target text, fragment of
the error) for the bad ones.
"""

from __future__ import annotations

import pytest

from grpclb.config.target import Target, format_address, parse_target
from grpclb.errors import ConfigError

GOOD: list[tuple[str, dict[str, object]]] = [
    # dns:///host:port - the system resolver
    (
        "dns:///svc.ns.svc.cluster.local:9000",
        {"host": "svc.ns.svc.cluster.local", "port": 9000, "dns_server": None},
    ),
    ("dns:svc.ns:9000", {"host": "svc.ns", "port": 9000, "dns_server": None}),
    # dns://SERVER_IP[:PORT]/host:port - the authority names the DNS server
    ("dns://10.0.0.10/svc:9000", {"host": "svc", "port": 9000, "dns_server": ("10.0.0.10", 53)}),
    (
        "dns://10.0.0.10:5353/svc:9000",
        {"host": "svc", "port": 9000, "dns_server": ("10.0.0.10", 5353)},
    ),
    ("dns://[::1]:5353/svc:9000", {"host": "svc", "port": 9000, "dns_server": ("::1", 5353)}),
    ("dns://[::1]/svc:9000", {"host": "svc", "port": 9000, "dns_server": ("::1", 53)}),
    # host:port - the same as dns:///host:port
    ("svc:9000", {"host": "svc", "port": 9000, "dns_server": None}),
    ("svc.ns.svc.cluster.local:1", {"host": "svc.ns.svc.cluster.local", "port": 1}),
    ("localhost:65535", {"host": "localhost", "port": 65535}),
    ("  svc:9000  ", {"host": "svc", "port": 9000, "text": "svc:9000"}),
    ("svc.example.com.:443", {"host": "svc.example.com", "port": 443}),
    # the limits themselves are allowed: 63-character labels, 253 characters in all
    ("a" * 63 + ".svc:80", {"host": "a" * 63 + ".svc"}),
    (".".join(["a" * 62] * 4) + ".a:80", {"host": ".".join(["a" * 62] * 4) + ".a"}),
    (".".join(["a" * 62] * 4) + ".a.:80", {"host": ".".join(["a" * 62] * 4) + ".a"}),
    ("my-svc-2.ns-1:80", {"host": "my-svc-2.ns-1"}),
    ("xn--mnchen-3ya.de:443", {"host": "xn--mnchen-3ya.de"}),
    ("1.2.3.400:80", {"host": "1.2.3.400"}),  # not an address, so a name made of digits
    ("svc:080", {"port": 80}),
]


@pytest.mark.parametrize(("text", "want"), GOOD, ids=[t.strip() for t, _ in GOOD])
def test_dns_targets(text: str, want: dict[str, object]) -> None:
    target = parse_target(text)
    assert not target.is_static
    assert target.static_addresses == ()
    for field, value in want.items():
        assert getattr(target, field) == value, field


@pytest.mark.parametrize(
    ("text", "addresses", "host", "port"),
    [
        ("ipv4:10.0.0.1:80", ("10.0.0.1:80",), "10.0.0.1", 80),
        ("ipv4:10.0.0.1:80,10.0.0.2:81", ("10.0.0.1:80", "10.0.0.2:81"), "10.0.0.1", 80),
        ("ipv4:10.0.0.1:80, 10.0.0.2:81", ("10.0.0.1:80", "10.0.0.2:81"), "10.0.0.1", 80),
        ("ipv6:[::1]:80", ("[::1]:80",), "::1", 80),
        ("ipv6:[::1]:80,[fe80::1]:81", ("[::1]:80", "[fe80::1]:81"), "::1", 80),
        ("ipv6:[2001:DB8:0::1]:443", ("[2001:db8::1]:443",), None, 443),
        # an IP literal needs no resolution: it becomes a fixed list of one
        ("10.0.0.1:80", ("10.0.0.1:80",), "10.0.0.1", 80),
        ("[::1]:50051", ("[::1]:50051",), "::1", 50051),
        ("dns:///10.0.0.1:80", ("10.0.0.1:80",), "10.0.0.1", 80),
        ("dns:///[::1]:80", ("[::1]:80",), "::1", 80),
        ("dns://10.0.0.10/10.0.0.1:80", ("10.0.0.1:80",), "10.0.0.1", 80),
    ],
)
def test_static_targets(text: str, addresses: tuple[str, ...], host: str | None, port: int) -> None:
    target = parse_target(text)
    assert target.is_static
    assert target.static_addresses == addresses
    assert target.port == port
    if host is not None:
        assert target.host == host
    assert target.dns_server is None


BAD: list[tuple[str, str]] = [
    # a missing port is an error, not a guess
    ("svc", "no port"),
    ("dns:///svc", "no port"),
    ("dns://10.0.0.10/svc", "no port"),
    ("ipv4:10.0.0.1", "no port"),
    ("ipv4:10.0.0.1:80,10.0.0.2", "no port"),
    ("ipv6:[::1]", "no port"),
    ("[::1]", "no port"),
    # bad ports
    ("svc:", "port ''"),
    ("svc:0", "port '0'"),
    ("svc:65536", "port '65536'"),
    ("svc:http", "port 'http'"),
    ("svc:-1", "port '-1'"),
    ("svc:80x", "port '80x'"),
    ("dns://10.0.0.10:99999/svc:80", "port '99999'"),
    # unknown schemes
    ("http://svc:80", "scheme 'http'"),
    ("unix:///tmp/grpc.sock", "scheme 'unix'"),
    ("xds:///svc:80", "scheme 'xds'"),
    # empty
    ("", "empty"),
    ("   ", "empty"),
    (":80", "host is empty"),
    ("dns:///:80", "host is empty"),
    ("ipv4:10.0.0.1:80,", "host is empty"),
    # malformed dns authority
    ("dns://resolver.local/svc:80", "must be an IP address"),
    ("dns://10.0.0.10", "dns:///host:port"),
    # wrong address family or spelling
    ("ipv4:10.0.0.300:80", "not an IPv4 address"),
    ("ipv4:[::1]:80", "not an IPv4 address"),
    ("ipv4:svc:80", "not an IPv4 address"),
    ("ipv6:10.0.0.1:80", "not an IPv6 address"),
    ("ipv6:[10.0.0.1]:80", "not an IPv6 address"),
    ("ipv6:::1:80", "must be in brackets"),
    ("::1:80", "must be in brackets"),
    ("[::1:80", "unclosed '['"),
    ("[::1]x80", "unexpected 'x80'"),
    # DNS names: labels of 1-63 letters, digits and hyphens, 253 characters in all
    ("a..b:80", "empty label"),
    (".svc:80", "empty label"),
    ("..:80", "empty label"),
    (".:80", "is not a DNS name"),
    ("a b:80", "the label 'a b'"),
    ("a\x00b:80", "the label 'a\\x00b'"),
    ("a\nb:80", "the label 'a\\nb'"),
    ("dns:///svc\n.ns:80", "the label 'svc\\n'"),
    ("a" * 300 + ":80", "more than 253"),
    ("a" * 64 + ".svc:80", "label of 64 characters, more than 63"),
    (".".join(["a" * 62] * 4) + ".ab:80", "254 characters long, more than 253"),
    ("-svc:80", "the label '-svc'"),
    ("svc-:80", "the label 'svc-'"),
    ("svc_1:80", "the label 'svc_1'"),
    ("svc/x:80", "the label 'svc/x'"),
    ("münchen.de:443", "IDNA 'xn--' form"),
    ("dns://10.0.0.10/a..b:80", "empty label"),
    # ports: ASCII digits only, 1-65535
    ("host:\uff18\uff10", "port '\uff18\uff10'"),
    ("host:\u00b2", "port '\u00b2'"),
    ("host:\u0668\u0660", "port '\u0668\u0660'"),
    ("host:+80", "port '+80'"),
    ("host: 80", "port ' 80'"),
    ("host:8_0", "port '8_0'"),
    ("ipv4:10.0.0.1:\uff18\uff10", "ASCII digits from 1 to 65535"),
    ("ipv6:[::1]:\u00b2", "ASCII digits from 1 to 65535"),
    ("dns://10.0.0.10:\u00b2/svc:80", "ASCII digits from 1 to 65535"),
    # IP literals: ASCII only, and a zone that names an interface
    ("ipv4:\u0661.2.3.4:80", "not an IPv4 address"),
    ("ipv6:[fe80::1%a b]:80", "IPv6 zone 'a b'"),
    ("[fe80::1%\n]:80", "IPv6 zone"),
]


@pytest.mark.parametrize(("text", "fragment"), BAD, ids=[t or "<empty>" for t, _ in BAD])
def test_bad_targets(text: str, fragment: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_target(text)
    message = str(info.value)
    assert fragment in message
    assert repr(text.strip()) in message or repr(text) in message
    assert "dns:///host:port" in message  # and the forms that would have worked


@pytest.mark.parametrize(
    ("text", "rule"),
    [
        ("a..b:80", "labels of 1-63 ASCII letters, digits and hyphens"),
        ("a" * 300 + ":80", "at most 253 characters"),
        ("host:\uff18\uff10", "ASCII digits from 1 to 65535"),
        ("host:\u00b2", "ASCII digits from 1 to 65535"),
    ],
)
def test_errors_name_the_rule_broken(text: str, rule: str) -> None:
    with pytest.raises(ConfigError, match=rule):
        parse_target(text)


def test_a_long_host_is_shortened_in_the_message() -> None:
    with pytest.raises(ConfigError) as info:
        parse_target(".".join(["a" * 60] * 3) + ".b b:80")
    why = str(info.value).split("is invalid:")[1]
    assert "'b b'" in why
    assert "a" * 60 not in why


@pytest.mark.parametrize(
    ("text", "address"),
    [("[fe80::1%eth0]:80", "[fe80::1%eth0]:80"), ("ipv6:[fe80::1%2]:80", "[fe80::1%2]:80")],
)
def test_ipv6_zones_naming_an_interface_are_accepted(text: str, address: str) -> None:
    assert parse_target(text).static_addresses == (address,)


def test_config_error_is_a_value_error() -> None:
    with pytest.raises(ValueError):
        parse_target("svc")


@pytest.mark.parametrize("value", [None, 9000], ids=repr)
def test_non_string_target(value: object) -> None:
    with pytest.raises(ConfigError, match="empty"):
        parse_target(value)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("text", "authority"),
    [
        ("dns:///svc.ns.svc.cluster.local:9000", "svc.ns.svc.cluster.local:9000"),
        ("dns://10.0.0.10:5353/svc:9000", "svc:9000"),
        ("svc:9000", "svc:9000"),
        ("ipv4:10.0.0.1:80,10.0.0.2:81", "10.0.0.1:80"),
    ],
)
def test_authority_is_the_service_name_not_a_pod(text: str, authority: str) -> None:
    assert parse_target(text).authority == authority


@pytest.mark.parametrize("text", ["ipv6:[::1]:80", "[::1]:80", "dns:///[::1]:80"])
def test_ipv6_authority_is_bracketed(text: str) -> None:
    assert parse_target(text).authority == "[::1]:80"


@pytest.mark.parametrize(
    ("ip", "port", "want"),
    [("10.0.0.1", 80, "10.0.0.1:80"), ("::1", 80, "[::1]:80"), ("fe80::1", 1, "[fe80::1]:1")],
)
def test_format_address(ip: str, port: int, want: str) -> None:
    assert format_address(ip, port) == want


def test_target_is_a_frozen_value() -> None:
    target = parse_target("svc:9000")
    assert target == Target("svc:9000", "svc", 9000)
    with pytest.raises(AttributeError):
        target.port = 1  # type: ignore[misc]
