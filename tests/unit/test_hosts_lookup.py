"""Names from the hosts file, before DNS, as the system resolver reads them.

The parser and the re-read rule are tested on files in a temporary folder;
the balancer's rule for a hosts-file answer (calls wait for a first READY
address rather than land on one that refuses) on a fake transport.
"""

from __future__ import annotations

import os
from pathlib import Path

import grpc
import pytest

from grpclb.config.settings import Settings
from grpclb.config.target import parse_target
from grpclb.core.balancer import Balancer
from grpclb.core.endpoints import Connection
from grpclb.resolver import HostsFile, Resolution, Resolver, parse_hosts

S = grpc.ChannelConnectivity
V6, V4 = "[::1]:50051", "127.0.0.1:50051"

DEBIAN = """\
127.0.0.1\tlocalhost
127.0.1.1\tbox.example.org box

# The following lines are desirable for IPv6 capable hosts
::1     localhost ip6-localhost ip6-loopback
ff02::1 ip6-allnodes
# Entries added by HostAliases.
10.0.0.7\tfoo.local\tbar.local   # trailing comment
not-an-ip   broken.local
10.0.0.8
fe80::1%eth0 link.local
10.0.0.9 FOO.local
"""


@pytest.mark.parametrize(
    ("name", "want"),
    [
        ("localhost", ("127.0.0.1", "::1")),
        ("LocalHost", ("127.0.0.1", "::1")),
        ("localhost.", ("127.0.0.1", "::1")),
        ("box", ("127.0.1.1",)),
        ("box.example.org", ("127.0.1.1",)),
        ("ip6-loopback", ("::1",)),
        ("foo.local", ("10.0.0.7", "10.0.0.9")),  # every line that names it, in file order
        ("bar.local", ("10.0.0.7",)),
        ("link.local", ("fe80::1%eth0",)),
        ("broken.local", ()),  # its line has no IP address
        ("comment", ()),
        ("missing", ()),
    ],
)
def test_hosts_file_lines_as_hosts5_describes_them(name: str, want: tuple[str, ...]) -> None:
    table = parse_hosts(DEBIAN)
    assert table.get(name.lower().rstrip("."), ()) == want


def test_the_file_is_read_again_when_it_changes(tmp_path: Path) -> None:
    path = tmp_path / "hosts"
    path.write_text("10.0.0.1 svc.local\n")
    hosts = HostsFile(str(path))
    assert hosts.lookup("svc.local") == ("10.0.0.1",)
    path.write_text("10.0.0.2 svc.local\n")  # same size: the modification time tells
    os.utime(path, ns=(0, os.stat(path).st_mtime_ns + 1_000_000_000))
    assert hosts.lookup("svc.local") == ("10.0.0.2",)
    replacement = tmp_path / "hosts.new"
    replacement.write_text("10.0.0.3 svc.local\n10.0.0.4 svc.local\n")
    os.replace(replacement, path)  # as Kubernetes and editors replace it
    assert hosts.lookup("svc.local") == ("10.0.0.3", "10.0.0.4")
    path.unlink()
    assert hosts.lookup("svc.local") == ()  # a missing file is an empty one


def test_an_unchanged_file_is_not_parsed_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "hosts"
    path.write_text("10.0.0.1 svc.local\n")
    hosts = HostsFile(str(path))
    hosts.lookup("svc.local")
    monkeypatch.setattr("grpclb.resolver.parse_hosts", lambda text: pytest.fail("parsed again"))
    assert hosts.lookup("svc.local") == ("10.0.0.1",)


def resolve(target: str, hosts: str | None) -> Resolution:
    return Resolver(parse_target(target), timeout=0.2, hosts_file=hosts).resolve()


def test_a_name_in_the_hosts_file_is_answered_from_it_alone(tmp_path: Path) -> None:
    path = tmp_path / "hosts"
    path.write_text("127.0.0.1 localhost\n::1 localhost\n10.1.2.3 alias.cluster\n")
    assert resolve("localhost:50051", str(path)) == Resolution((V4, V6), source="hosts")
    assert resolve("dns:///alias.cluster:80", str(path)).addresses == ("10.1.2.3:80",)


def test_a_named_dns_server_is_asked_even_for_names_in_the_hosts_file(tmp_path: Path) -> None:
    path = tmp_path / "hosts"
    path.write_text("10.1.2.3 alias.cluster\n")
    # No server listens on 127.0.0.1:1: the lookup fails, and the file is not consulted.
    resolution = resolve("dns://127.0.0.1:1/alias.cluster:80", str(path))
    assert resolution.failed and resolution.source == "dns"


def test_static_targets_say_so() -> None:
    assert resolve("127.0.0.1:80", None).source == "static"


# --- the balancer: a hosts-file answer holds calls until an address is READY ----------------


class Transport:
    def __init__(self) -> None:
        self.dialled: dict[str, Connection] = {}

    def dial(self, connection: Connection) -> object:
        self.dialled[connection.endpoint.address] = connection
        return object()

    def watch(self, connection: Connection) -> None:
        pass

    def connect(self, connection: Connection) -> None:
        pass

    def close_connection(self, connection: Connection) -> None:
        pass

    def wake(self) -> None:
        pass


def balancer_with(resolution: Resolution, **settings: object) -> tuple[Balancer, Transport]:
    transport = Transport()
    balancer = Balancer(
        parse_target("localhost:50051"), Settings.load(settings, environ={}), transport
    )
    balancer.update(resolution)
    return balancer, transport


def picks(balancer: Balancer, n: int = 20) -> set[str]:
    found = set()
    for _ in range(n):
        connection = balancer.start_call(None)
        assert connection is not None
        found.add(connection.endpoint.address)
        connection.release(grpc.StatusCode.OK)
    return found


@pytest.mark.parametrize("policy", ["least_request", "round_robin", "pick_first", "random"])
def test_calls_wait_for_the_address_that_answers(policy: str) -> None:
    balancer, transport = balancer_with(Resolution((V6, V4), source="hosts"), policy=policy)
    # Both addresses are connecting: no call may be handed to either yet.
    assert balancer.start_call(None) is None
    assert balancer.admission_view() == (False, False)  # waits, as before a first answer
    balancer.connectivity_changed(transport.dialled[V6], S.CONNECTING)
    balancer.connectivity_changed(transport.dialled[V6], S.TRANSIENT_FAILURE)  # refused
    assert balancer.start_call(None) is None
    balancer.connectivity_changed(transport.dialled[V4], S.CONNECTING)
    balancer.connectivity_changed(transport.dialled[V4], S.READY)
    assert balancer.admission_view() == (True, True)
    assert picks(balancer) == {V4}


def test_when_every_address_refuses_calls_fail_as_grpcio_would() -> None:
    balancer, transport = balancer_with(Resolution((V6, V4), source="hosts"))
    for address in (V6, V4):
        balancer.connectivity_changed(transport.dialled[address], S.TRANSIENT_FAILURE)
    assert balancer.admission_view() == (True, True)
    assert balancer.start_call(None) is not None  # on a failed address: UNAVAILABLE there


def test_after_a_first_ready_address_the_usual_rule_applies() -> None:
    balancer, transport = balancer_with(Resolution((V6, V4), source="hosts"))
    balancer.connectivity_changed(transport.dialled[V4], S.READY)
    balancer.connectivity_changed(transport.dialled[V4], S.IDLE)  # the server restarts
    assert balancer.has_endpoints  # calls queue on connecting pods, as for DNS answers


def test_dns_answers_keep_queueing_calls_on_connecting_pods() -> None:
    balancer, _ = balancer_with(Resolution((V6, V4)))
    assert balancer.has_endpoints
    assert balancer.admission_view() == (True, True)
