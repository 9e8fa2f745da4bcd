"""The harness must be right before any balancer test built on it can be trusted.

Each test pins one promise the other tests rely on: replies name their pod,
modes fail the way a sick pod does, counts mean what they say, DNS answers
exactly the records set, and TLS pods verify under the service's name.
"""

from __future__ import annotations

import contextlib
import signal
import time
from collections.abc import Callable, Iterator
from typing import Any

import dns.exception
import dns.message
import dns.query
import dns.resolver
import grpc
import pytest

from grpclb.testing import (
    SERVICE_NAME,
    DnsmasqNotFound,
    DnsServer,
    PodFleet,
    ProcessPod,
    TestPki,
    ThreadPod,
    echo_pb2_grpc,
)
from grpclb.testing import echo_pb2 as pb
from tests.helpers import wait_until

FleetFactory = Callable[..., PodFleet]
DEADLINE_S = 2.0  # every call in this file carries a deadline
OWN_CONNECTION = ("grpc.use_local_subchannel_pool", 1)


@contextlib.contextmanager
def echo_stub(
    address: str,
    *,
    options: tuple[tuple[str, Any], ...] = (),
    credentials: grpc.ChannelCredentials | None = None,
) -> Iterator[Any]:
    if credentials is None:
        channel = grpc.insecure_channel(address, options=list(options))
    else:
        channel = grpc.secure_channel(address, credentials, options=list(options))
    try:
        yield echo_pb2_grpc.EchoStub(channel)  # type: ignore[no-untyped-call]
    finally:
        channel.close()


def rpc_error(call: Callable[[], object]) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        call()
    return info.value


def requests(*messages: str) -> Iterator[pb.EchoRequest]:
    return iter([pb.EchoRequest(message=m) for m in messages])


def resolver_for(server: DnsServer) -> dns.resolver.Resolver:
    resolver = dns.resolver.Resolver(configure=False)
    resolver.nameservers = [server.host]
    resolver.port = server.port
    resolver.lifetime = 1.0
    return resolver


# --- pods ---------------------------------------------------------------------------------


def test_pods_share_a_port_on_consecutive_loopback_addresses(pods: FleetFactory) -> None:
    fleet = pods(3)
    assert fleet.addresses == [f"127.0.0.{i}:{fleet.port}" for i in (2, 3, 4)]
    fleet.add(2)
    assert [pod.host for pod in fleet] == [f"127.0.0.{i}" for i in range(2, 7)]
    assert len({pod.port for pod in fleet}) == 1


def test_every_rpc_kind_answers_with_the_serving_pods_address(pods: FleetFactory) -> None:
    for pod in pods(2):
        with echo_stub(pod.address) as stub:
            reply = stub.Unary(pb.EchoRequest(message="hi"), timeout=DEADLINE_S)
            assert (reply.pod, reply.message) == (pod.address, "hi")
            stream = stub.ServerStream(pb.EchoRequest(message="s", count=3), timeout=DEADLINE_S)
            assert [(r.pod, r.index) for r in stream] == [(pod.address, i) for i in range(3)]
            reply = stub.ClientStream(requests("a", "b", "c"), timeout=DEADLINE_S)
            assert (reply.pod, reply.message, reply.index) == (pod.address, "abc", 3)
            replies = list(stub.BidiStream(requests("x", "y"), timeout=DEADLINE_S))
            assert [(r.pod, r.message, r.index) for r in replies] == [
                (pod.address, "x", 0),
                (pod.address, "y", 1),
            ]
        assert pod.stats().calls == 4


def test_failure_modes_fail_like_a_sick_pod(pods: FleetFactory) -> None:
    (pod,) = pods(1)
    with echo_stub(pod.address) as stub:

        def unary(**kwargs: Any) -> Any:
            return stub.Unary(pb.EchoRequest(message="m"), **{"timeout": DEADLINE_S, **kwargs})

        pod.set_mode("unavailable")
        error = rpc_error(unary)
        assert error.code() == grpc.StatusCode.UNAVAILABLE
        assert error.details() == f"pod {pod.address} set to unavailable"

        pod.set_mode("not_found")
        assert rpc_error(unary).code() == grpc.StatusCode.NOT_FOUND
        stream = stub.ServerStream(pb.EchoRequest(count=2), timeout=DEADLINE_S)
        assert rpc_error(lambda: list(stream)).code() == grpc.StatusCode.NOT_FOUND

        pod.set_mode("slow", delay_ms=200)
        started = time.monotonic()
        assert unary().pod == pod.address
        assert 0.2 <= time.monotonic() - started < DEADLINE_S

        pod.set_mode("ok")
        assert unary().message == "m"


def test_hang_holds_the_call_until_its_deadline(pods: FleetFactory) -> None:
    (pod,) = pods(1)
    pod.set_mode("hang")
    with echo_stub(pod.address) as stub:
        started = time.monotonic()
        future = stub.Unary.future(pb.EchoRequest(), timeout=0.5)
        wait_until(lambda: pod.stats().in_flight == 1, 3, "the call to hang")
        assert rpc_error(future.result).code() == grpc.StatusCode.DEADLINE_EXCEEDED
        assert 0.5 <= time.monotonic() - started < DEADLINE_S
    # The handler wakes with the deadline instead of pinning a worker thread.
    wait_until(lambda: pod.stats().in_flight == 0, 3, "the handler to wake")


def test_stats_count_echo_calls_and_distinct_connections(pods: FleetFactory) -> None:
    (pod,) = pods(1)
    own = (OWN_CONNECTION,)
    with echo_stub(pod.address, options=own) as a, echo_stub(pod.address, options=own) as b:
        for stub in (a, b, a):
            stub.Unary(pb.EchoRequest(), timeout=DEADLINE_S)
    stats = pod.stats()  # Control calls themselves are never counted
    assert (stats.pod, stats.calls, stats.connections, stats.in_flight) == (pod.address, 3, 2, 0)
    assert len(stats.peers) == 2 and all(p.startswith("ipv4:127.0.0.1:") for p in stats.peers)

    assert pod.reset_stats() == stats
    assert pod.stats().calls == pod.stats().connections == 0


def test_channels_share_one_connection_without_a_local_subchannel_pool(
    pods: FleetFactory,
) -> None:
    """grpc/grpc#20985: the reason OWN_CONNECTION exists."""
    (pod,) = pods(1)
    with echo_stub(pod.address) as a, echo_stub(pod.address) as b:
        a.Unary(pb.EchoRequest(), timeout=DEADLINE_S)
        b.Unary(pb.EchoRequest(), timeout=DEADLINE_S)
    assert (pod.stats().calls, pod.stats().connections) == (2, 1)


def test_fleet_counts_and_removal(pods: FleetFactory) -> None:
    fleet = pods(3)
    first, second, third = fleet.pods
    for pod, n in ((first, 1), (third, 2)):
        with echo_stub(pod.address) as stub:
            for _ in range(n):
                stub.Unary(pb.EchoRequest(), timeout=DEADLINE_S)
    assert fleet.counts() == {first.address: 1, second.address: 0, third.address: 2}

    fleet.remove(second)
    assert fleet.addresses == [first.address, third.address]
    with echo_stub(second.address) as stub:
        error = rpc_error(lambda: stub.Unary(pb.EchoRequest(), timeout=DEADLINE_S))
    assert error.code() == grpc.StatusCode.UNAVAILABLE


def test_two_pods_can_never_share_an_address(pods: FleetFactory) -> None:
    (pod,) = pods(1)
    with pytest.raises(OSError, match="cannot bind"):
        ThreadPod(pod.host, pod.port)


def test_process_pods_start_together_and_die_on_sigkill(pods: FleetFactory) -> None:
    started = time.monotonic()
    fleet = pods(3, processes=True)
    assert time.monotonic() - started < 10
    victim, survivor = fleet[0], fleet[1]
    assert isinstance(victim, ProcessPod)
    for pod in fleet:
        with echo_stub(pod.address) as stub:
            assert stub.Unary(pb.EchoRequest(), timeout=DEADLINE_S).pod == pod.address
    survivor.set_mode("not_found")
    with echo_stub(victim.address) as stub:
        stub.Unary(pb.EchoRequest(), timeout=DEADLINE_S)
        victim.kill()
        assert victim.returncode == -signal.SIGKILL
        error = rpc_error(lambda: stub.Unary(pb.EchoRequest(), timeout=DEADLINE_S))
        assert error.code() == grpc.StatusCode.UNAVAILABLE
    with echo_stub(survivor.address) as stub:
        error = rpc_error(lambda: stub.Unary(pb.EchoRequest(), timeout=DEADLINE_S))
        assert error.code() == grpc.StatusCode.NOT_FOUND
    assert survivor.stats().calls == 2


def test_a_process_pod_kills_itself_as_its_nth_call_starts(pods: FleetFactory) -> None:
    (victim,) = pods(1, processes=True)
    assert isinstance(victim, ProcessPod)
    victim.set_mode("sigkill_at", 3)
    with echo_stub(victim.address) as stub:
        for _ in range(2):
            assert stub.Unary(pb.EchoRequest(), timeout=DEADLINE_S).pod == victim.address
        error = rpc_error(lambda: stub.Unary(pb.EchoRequest(), timeout=DEADLINE_S))
        assert error.code() == grpc.StatusCode.UNAVAILABLE  # the third call: no answer
    deadline = time.monotonic() + DEADLINE_S
    while victim.returncode is None and time.monotonic() < deadline:
        time.sleep(0.01)
    assert victim.returncode == -signal.SIGKILL


def test_a_thread_pod_refuses_to_kill_its_process(pods: FleetFactory) -> None:
    (pod,) = pods(1)
    with pytest.raises(grpc.RpcError) as raised:
        pod.set_mode("sigkill_at", 1)
    assert raised.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    with echo_stub(pod.address) as stub:
        assert stub.Unary(pb.EchoRequest(), timeout=DEADLINE_S).pod == pod.address


def test_process_pod_start_failure_shows_the_childs_stderr(pods: FleetFactory) -> None:
    (pod,) = pods(1)
    with pytest.raises(RuntimeError, match=r"(?s)exited with code 1.*cannot bind"):
        ProcessPod(pod.host, pod.port)


# --- DNS ----------------------------------------------------------------------------------


def test_dns_answers_exactly_the_records_set(dns_server: DnsServer) -> None:
    resolver = resolver_for(dns_server)
    dns_server.set_records(SERVICE_NAME, ["127.0.0.3", "127.0.0.2"])
    answer = resolver.resolve(SERVICE_NAME, "A")
    assert sorted(r.to_text() for r in answer) == ["127.0.0.2", "127.0.0.3"]
    assert answer.rrset is not None and answer.rrset.ttl == dns_server.ttl

    dns_server.set_records(SERVICE_NAME, ["127.0.0.4", "::1"])
    assert dns_server.lookup(SERVICE_NAME) == ["127.0.0.4", "::1"]
    assert [r.to_text() for r in resolver.resolve(SERVICE_NAME, "AAAA")] == ["::1"]

    dns_server.set_records(SERVICE_NAME, [])
    started = time.monotonic()
    with pytest.raises(dns.resolver.NXDOMAIN):
        resolver.resolve(SERVICE_NAME, "A")
    with pytest.raises(dns.resolver.NXDOMAIN):
        resolver.resolve("never-set.default.svc.cluster.local", "A")
    assert time.monotonic() - started < 0.5  # answered, not timed out


def test_dns_down_times_out_and_restart_keeps_port_and_records(dns_server: DnsServer) -> None:
    dns_server.set_records(SERVICE_NAME, ["127.0.0.2"])
    port = dns_server.port
    dns_server.stop()
    query = dns.message.make_query(SERVICE_NAME, "A")
    with pytest.raises(dns.exception.Timeout):
        dns.query.udp(query, dns_server.host, port=port, timeout=0.3)

    dns_server.set_records("other.test", ["127.0.0.9"])  # kept for the next start
    dns_server.restart()
    assert dns_server.port == port
    assert dns_server.lookup(SERVICE_NAME) == ["127.0.0.2"]
    assert dns_server.lookup("other.test") == ["127.0.0.9"]


def test_grpc_own_resolver_reaches_the_pods_through_the_target(
    dns_server: DnsServer, pods: FleetFactory
) -> None:
    fleet = pods(3)
    dns_server.set_records(SERVICE_NAME, [pod.host for pod in fleet])
    round_robin = ("grpc.service_config", '{"loadBalancingConfig": [{"round_robin": {}}]}')
    with echo_stub(dns_server.target(SERVICE_NAME, fleet.port), options=(round_robin,)) as stub:
        served = {stub.Unary(pb.EchoRequest(), timeout=DEADLINE_S).pod for _ in range(30)}
    assert served == set(fleet.addresses)


def test_a_second_dns_server_never_shares_a_port(dns_server: DnsServer) -> None:
    """dnsmasq alone would bind a taken UDP port and split the queries with its twin."""
    with pytest.raises(RuntimeError, match="in use"):
        DnsServer(port=dns_server.port).start()


def test_missing_dnsmasq_says_how_to_install_it() -> None:
    with pytest.raises(DnsmasqNotFound, match=r"scripts/setup\.sh"):
        DnsServer(dnsmasq="/nonexistent/dnsmasq")


# --- TLS ----------------------------------------------------------------------------------


@pytest.mark.parametrize("processes", [False, True], ids=["thread", "process"])
def test_tls_pods_verify_under_the_service_name(
    pods: FleetFactory, pki: TestPki, processes: bool
) -> None:
    (pod,) = pods(1, processes=processes, tls=pki.server_tls(SERVICE_NAME))
    override = ("grpc.ssl_target_name_override", SERVICE_NAME)
    with echo_stub(pod.address, options=(override,), credentials=pki.client_credentials()) as s:
        assert s.Unary(pb.EchoRequest(), timeout=DEADLINE_S).pod == pod.address
    # Without the override the IP is checked against a certificate that names the service.
    with echo_stub(pod.address, credentials=pki.client_credentials()) as stub:
        error = rpc_error(lambda: stub.Unary(pb.EchoRequest(), timeout=DEADLINE_S))
        assert error.code() == grpc.StatusCode.UNAVAILABLE
    other_ca = TestPki().client_credentials()
    with echo_stub(pod.address, options=(override,), credentials=other_ca) as stub:
        error = rpc_error(lambda: stub.Unary(pb.EchoRequest(), timeout=DEADLINE_S))
        assert error.code() == grpc.StatusCode.UNAVAILABLE
    # Control stays reachable in plaintext on a side port.
    assert pod.control_port != pod.port
    assert pod.stats().calls == 1
