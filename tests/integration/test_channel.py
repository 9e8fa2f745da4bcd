"""The sync channel against real pods and a real DNS server (issue: core)."""

from __future__ import annotations

import importlib
import threading
import time
from collections import Counter
from concurrent import futures

import grpc
import pytest

import grpclb
from grpclb.testing import SERVICE_NAME, echo_pb2
from tests.helpers import ready_count, spread, stub, wait_ready, wait_until

FAST = {"dns_refresh_interval": "200ms", "dns_min_refresh_interval": "100ms"}


@pytest.fixture
def fleet(pods, dns_server):
    """Five pods behind the headless name."""
    fleet = pods(5)
    dns_server.set_records(SERVICE_NAME, [p.host for p in fleet])
    return fleet


def target(dns_server, fleet) -> str:
    return dns_server.target(SERVICE_NAME, fleet.port)


def test_round_robin_through_a_generated_stub_is_exact(fleet, dns_server):
    with grpclb.channel(target(dns_server, fleet), policy="round_robin") as channel:
        wait_ready(channel, 5)
        counts = spread(channel, 1000)
    assert sorted(counts) == sorted(fleet.addresses)
    assert set(counts.values()) == {200}


def test_plain_grpcio_channel_pins_every_call_to_one_pod(fleet, dns_server):
    """The problem this library exists for, shown with grpcio's own dns resolver."""
    with grpc.insecure_channel(target(dns_server, fleet)) as channel:
        counts = spread(channel, 50)
    assert len(counts) == 1


@pytest.mark.parametrize("policy", ["least_request", "random"])
def test_load_spreading_policies_reach_every_pod(fleet, dns_server, policy):
    with grpclb.channel(target(dns_server, fleet), policy=policy) as channel:
        wait_ready(channel, 5)
        counts = spread(channel, 500)
    assert sorted(counts) == sorted(fleet.addresses)
    assert min(counts.values()) >= 50, counts  # 100 expected each


def test_least_request_prefers_the_pod_with_fewer_calls_in_flight(pods, dns_server):
    fleet = pods(2)
    dns_server.set_records(SERVICE_NAME, [p.host for p in fleet])
    slow = fleet[0]
    slow.set_mode("slow", delay_ms=300)
    with grpclb.channel(target(dns_server, fleet), policy="least_request") as channel:
        wait_ready(channel, 2)
        echo = stub(channel)
        with futures.ThreadPoolExecutor(8) as pool:
            replies = list(
                pool.map(lambda i: echo.Unary(echo_pb2.EchoRequest(), timeout=5).pod, range(80))
            )
    counts = Counter(replies)
    assert counts[fleet[1].address] > 3 * counts[slow.address], counts


def test_pick_first_sends_everything_to_one_pod(fleet, dns_server):
    with grpclb.channel(target(dns_server, fleet), policy="pick_first") as channel:
        wait_ready(channel, 5)
        counts = spread(channel, 50)
    assert list(counts.values()) == [50]


@pytest.mark.parametrize("policy", ["ring_hash", "maglev"])
def test_hash_policies_keep_a_key_on_one_pod(fleet, dns_server, policy):
    with grpclb.channel(target(dns_server, fleet), policy=policy, hash_key="x-user") as channel:
        wait_ready(channel, 5)
        echo = stub(channel)
        owners: dict[str, set[str]] = {}
        for i in range(300):
            key = f"user-{i % 30}"
            reply = echo.Unary(echo_pb2.EchoRequest(), timeout=5, metadata=(("x-user", key),))
            owners.setdefault(key, set()).add(reply.pod)
        keyless = spread(channel, 200)
    assert all(len(pods) == 1 for pods in owners.values())
    assert len({next(iter(p)) for p in owners.values()}) >= 3  # 30 keys land on several pods
    assert len(keyless) == 5  # calls without the key are spread


def test_ring_hash_moves_keys_only_to_a_new_tenth_pod(pods, dns_server):
    fleet = pods(9)
    dns_server.set_records(SERVICE_NAME, [p.host for p in fleet])
    keys = [f"user-{i}" for i in range(1000)]
    settings = dict(policy="ring_hash", hash_key="x-user", **FAST)
    with grpclb.channel(target(dns_server, fleet), **settings) as channel:
        wait_ready(channel, 9)
        before = owners_of(channel, keys)
        (new,) = fleet.add(1)
        dns_server.set_records(SERVICE_NAME, [p.host for p in fleet])
        wait_ready(channel, 10)
        after = owners_of(channel, keys)
    moved = [k for k in keys if before[k] != after[k]]
    between_old = [k for k in moved if after[k] != new.address]
    assert len(between_old) <= 10, between_old[:10]  # at most 1 %
    assert 50 <= sum(1 for k in keys if after[k] == new.address) <= 150


def owners_of(channel: grpc.Channel, keys: list[str]) -> dict[str, str]:
    echo = stub(channel)
    return {
        k: echo.Unary(echo_pb2.EchoRequest(), timeout=5, metadata=(("x-user", k),)).pod
        for k in keys
    }


def test_every_call_kind_and_style_through_the_stub(fleet, dns_server):
    with grpclb.channel(target(dns_server, fleet), policy="round_robin") as channel:
        wait_ready(channel, 5)
        echo = stub(channel)
        reply, call = echo.Unary.with_call(echo_pb2.EchoRequest(message="a"), timeout=5)
        assert reply.message == "a" and call.code() is grpc.StatusCode.OK
        assert echo.Unary.future(echo_pb2.EchoRequest(message="f"), timeout=5).result().message
        stream = list(echo.ServerStream(echo_pb2.EchoRequest(count=4), timeout=5))
        assert [r.index for r in stream] == [0, 1, 2, 3]
        assert len({r.pod for r in stream}) == 1  # a stream stays on its pod
        requests = [echo_pb2.EchoRequest(message=m) for m in "xyz"]
        assert echo.ClientStream(iter(requests), timeout=5).message == "xyz"
        assert echo.ClientStream.future(iter(requests), timeout=5).result().message == "xyz"
        bidi = list(echo.BidiStream(iter(requests), timeout=5))
        assert [r.message for r in bidi] == ["x", "y", "z"]
        wait_until(lambda: channel.stats().in_flight == 0, 5, "calls released")
        assert channel.stats().calls == 6


def test_intercept_channel_and_channel_ready_future(fleet, dns_server):
    seen: list[str] = []

    class Recorder(grpc.UnaryUnaryClientInterceptor):
        def intercept_unary_unary(self, continuation, details, request):
            seen.append(details.method)
            return continuation(details, request)

    with grpclb.channel(target(dns_server, fleet)) as channel:
        grpc.channel_ready_future(channel).result(timeout=10)
        intercepted = grpc.intercept_channel(channel, Recorder())
        assert stub(intercepted).Unary(echo_pb2.EchoRequest(), timeout=5).pod
    assert seen == ["/grpclb.testing.Echo/Unary"]


def test_in_flight_is_released_when_a_stream_is_cancelled_or_times_out(fleet, dns_server):
    with grpclb.channel(target(dns_server, fleet)) as channel:
        wait_ready(channel, 5)
        echo = stub(channel)
        stream = echo.ServerStream(echo_pb2.EchoRequest(count=1000, sleep_ms=5), timeout=5)
        next(stream)
        stream.cancel()
        fleet[0].set_mode("hang")
        for p in fleet.pods[1:]:
            p.set_mode("hang")
        with pytest.raises(grpc.RpcError) as raised:
            echo.Unary(echo_pb2.EchoRequest(), timeout=0.2)
        assert raised.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED
        wait_until(lambda: channel.stats().in_flight == 0, 5, "in-flight back to zero")


def test_many_threads_share_one_channel(fleet, dns_server):
    with grpclb.channel(target(dns_server, fleet), policy="round_robin") as channel:
        wait_ready(channel, 5)
        echo = stub(channel)
        with futures.ThreadPoolExecutor(8) as pool:
            pods = list(
                pool.map(lambda i: echo.Unary(echo_pb2.EchoRequest(), timeout=5).pod, range(1000))
            )
        stats = channel.stats()
    assert Counter(pods) == {a: 200 for a in fleet.addresses}
    assert stats.in_flight == 0 and stats.calls == 1000


def test_added_pod_gets_calls_within_the_refresh_interval(pods, dns_server):
    fleet = pods(2)
    dns_server.set_records(SERVICE_NAME, [p.host for p in fleet])
    with grpclb.channel(
        target(dns_server, fleet),
        policy="round_robin",
        dns_refresh_interval="1s",
        dns_respect_ttl=False,
    ) as channel:
        wait_ready(channel, 2)
        (new,) = fleet.add(1)
        dns_server.set_records(SERVICE_NAME, [p.host for p in fleet])
        added_at = time.monotonic()
        echo = stub(channel)
        while echo.Unary(echo_pb2.EchoRequest(), timeout=5).pod != new.address:
            assert time.monotonic() - added_at < 2.0, "new pod got no call within 1s + 1s"
            time.sleep(0.005)


def test_removing_then_killing_a_pod_under_load_fails_no_call(pods, dns_server):
    fleet = pods(3, processes=True)
    dns_server.set_records(SERVICE_NAME, [p.host for p in fleet])
    victim = fleet[2]
    errors: list[BaseException] = []
    served: Counter[str] = Counter()
    stop = threading.Event()
    with grpclb.channel(
        target(dns_server, fleet), policy="round_robin", retries=0, **FAST
    ) as channel:
        wait_ready(channel, 3)
        echo = stub(channel)

        def load() -> None:
            deadline = time.monotonic() + 20
            while not stop.is_set() and time.monotonic() < deadline:
                try:
                    served[echo.Unary(echo_pb2.EchoRequest(sleep_ms=20), timeout=5).pod] += 1
                except BaseException as exc:  # every failure is the finding
                    errors.append(exc)

        threads = [threading.Thread(target=load) for _ in range(4)]
        for t in threads:
            t.start()
        try:
            wait_until(lambda: served[victim.address] > 5, 10, "load on every pod")
            dns_server.set_records(SERVICE_NAME, [p.host for p in fleet.pods[:2]])
            wait_until(
                lambda: victim.address not in {e.address for e in channel.stats().endpoints},
                10,
                "victim drained",
            )
            fleet.remove(victim)  # SIGKILL-free stop; it is already out of rotation
            before = sum(served.values())
            wait_until(lambda: sum(served.values()) > before + 50, 10, "more calls")
        finally:
            stop.set()
            for t in threads:
                t.join(10)
    assert errors == []


def test_dns_down_keeps_the_last_good_set(fleet, dns_server):
    with grpclb.channel(
        target(dns_server, fleet), policy="round_robin", dns_timeout="200ms", **FAST
    ) as channel:
        wait_ready(channel, 5)
        dns_server.stop()
        failures = channel.stats().resolution_failures
        wait_until(lambda: channel.stats().resolution_failures > failures + 1, 10, "DNS failing")
        counts = spread(channel, 100)
        assert set(counts.values()) == {20}
        assert "timed out" in channel.stats().last_resolution_error


def test_empty_dns_fails_fast_then_recovers(fleet, dns_server):
    with grpclb.channel(target(dns_server, fleet), **FAST) as channel:
        wait_ready(channel, 5)
        dns_server.set_records(SERVICE_NAME, [])
        wait_until(lambda: len(channel.stats().endpoints) == 0, 10, "empty set")
        echo = stub(channel)
        started = time.monotonic()
        with pytest.raises(grpc.RpcError) as raised:
            echo.Unary(echo_pb2.EchoRequest(), timeout=5)
        assert time.monotonic() - started < 0.5
        assert raised.value.code() is grpc.StatusCode.UNAVAILABLE
        assert SERVICE_NAME in raised.value.details() and "no endpoints" in raised.value.details()
        # Every call style reports it as grpcio would.
        assert echo.Unary.future(echo_pb2.EchoRequest()).exception().code() is (
            grpc.StatusCode.UNAVAILABLE
        )
        with pytest.raises(grpc.RpcError):
            list(echo.ServerStream(echo_pb2.EchoRequest(count=1)))
        # wait_for_ready waits for pods to come back, then succeeds.
        waiter = futures.ThreadPoolExecutor(1).submit(
            echo.Unary, echo_pb2.EchoRequest(), timeout=10, wait_for_ready=True
        )
        time.sleep(0.3)  # give the waiter time to start waiting (nothing to await here)
        assert not waiter.done()
        dns_server.set_records(SERVICE_NAME, [p.host for p in fleet])
        assert waiter.result(timeout=10).pod in fleet.addresses
        wait_until(lambda: ready_count(channel) == 5, 10)


def test_wait_for_ready_gives_up_at_the_deadline(pods, dns_server):
    fleet = pods(1)
    absent = dns_server.target("absent.test", fleet.port)
    with grpclb.channel(absent, **FAST) as channel, pytest.raises(grpc.RpcError) as raised:
        stub(channel).Unary(echo_pb2.EchoRequest(), timeout=0.3, wait_for_ready=True)
    assert raised.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED


def test_tls_verifies_the_service_name_while_dialling_pod_ips(pods, dns_server, pki):
    good = pods(2, tls=pki.server_tls(SERVICE_NAME))
    dns_server.set_records(SERVICE_NAME, [p.host for p in good])
    with grpclb.channel(
        target(dns_server, good), credentials=pki.client_credentials(), policy="round_robin"
    ) as channel:
        wait_ready(channel, 2)  # both handshakes done: then round robin alternates
        assert len(spread(channel, 10)) == 2

    bad = pods(1, tls=pki.server_tls("someone-else.example"), first_host=20)
    dns_server.set_records("other.test", [p.host for p in bad])
    other = dns_server.target("other.test", bad.port)
    with (
        grpclb.channel(other, credentials=pki.client_credentials()) as channel,
        pytest.raises(grpc.RpcError) as raised,
    ):
        stub(channel).Unary(echo_pb2.EchoRequest(), timeout=3)
    assert raised.value.code() is grpc.StatusCode.UNAVAILABLE


def test_closed_channel_refuses_calls_like_grpcio(fleet, dns_server):
    channel = grpclb.channel(target(dns_server, fleet))
    wait_ready(channel, 5)
    channel.close()
    with pytest.raises(ValueError):
        stub(channel).Unary(echo_pb2.EchoRequest(), timeout=1)


def test_bad_environment_setting_names_the_variable(monkeypatch):
    monkeypatch.setenv("GRPCLB_POLICY", "lest_request")
    with pytest.raises(grpclb.ConfigError) as raised:
        grpclb.channel("dns:///svc.test:9000")
    message = str(raised.value)
    assert "GRPCLB_POLICY" in message and "lest_request" in message
    for policy in ("round_robin", "least_request", "random", "pick_first", "ring_hash", "maglev"):
        assert policy in message


def test_a_call_made_at_once_after_creation_waits_for_the_first_answer(pods, dns_server):
    fleet = pods(2)
    dns_server.set_records(SERVICE_NAME, [p.host for p in fleet])
    static = "ipv4:" + ",".join(fleet.addresses)
    for target_text in (static, target(dns_server, fleet)):
        for _ in range(10):  # the race window is small: several fresh channels
            with grpclb.channel(target_text) as channel:
                assert stub(channel).Unary(echo_pb2.EchoRequest(), timeout=5).pod


def test_a_forked_child_is_told_to_make_its_own_channel(fleet, dns_server, monkeypatch):
    # A real fork() of this process (grpcio servers and threads inside) can deadlock in
    # grpcio's own fork handlers; what grpclb decides depends only on the process id.
    channel_module = importlib.import_module(
        "grpclb.sync.channel"
    )  # the package's channel() hides it

    with grpclb.channel(target(dns_server, fleet)) as channel:
        wait_ready(channel, 5)
        parent = channel_module.os.getpid()
        monkeypatch.setattr(channel_module.os, "getpid", lambda: parent + 1)
        monkeypatch.setattr(channel_module, "_forked", True)  # what the fork hook sets
        with pytest.raises(ValueError, match=r"after fork\(\)"):
            stub(channel).Unary(echo_pb2.EchoRequest(), timeout=1)
        monkeypatch.undo()
        assert stub(channel).Unary(echo_pb2.EchoRequest(), timeout=5).pod
