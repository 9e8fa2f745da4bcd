"""Resilience against real failures (issue 3): ejection, retries, recycling, circuit breaking.

Pods are real grpcio servers on 127.0.0.x behind the real dnsmasq fixture;
ProcessPods where a test SIGKILLs one. Every call has a deadline, every loop
a bound and every thread a join timeout. Timing-sensitive settings are
shortened (ejection interval, ejection time) so outcomes do not hang on luck.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import grpc
import pytest

import grpclb
from grpclb.testing import SERVICE_NAME, PodFleet, ProcessPod, echo_pb2
from tests.helpers import serve, stub, wait_ready, wait_until

UNAVAILABLE = grpc.StatusCode.UNAVAILABLE
FleetFactory = Callable[..., PodFleet]
Outcome = str | grpc.RpcError  # the serving pod's address, or the error


def attempt(echo: Any, timeout: float = 5.0, **request: Any) -> Outcome:
    try:
        return str(echo.Unary(echo_pb2.EchoRequest(**request), timeout=timeout).pod)
    except grpc.RpcError as error:
        return error


def failures(outcomes: list[Outcome]) -> list[grpc.RpcError]:
    return [o for o in outcomes if isinstance(o, grpc.RpcError)]


def wait_until_or_false(predicate: Callable[[], bool], timeout: float) -> bool:
    try:
        return bool(wait_until(predicate, timeout))
    except AssertionError:
        return False


def row(channel: grpclb.Channel, address: str) -> Any:
    return channel.stats().by_address()[address]


def ejected(channel: grpclb.Channel) -> list[str]:
    return [e.address for e in channel.stats().endpoints if e.state == "ejected"]


class Load:
    """Threads sending unary calls until stopped (at most ``limit`` s), recording outcomes."""

    def __init__(
        self,
        channel: grpc.Channel,
        threads: int,
        *,
        sleep_ms: int = 0,
        pause: float = 0.0,
        timeout: float = 5.0,
        limit: float = 30.0,
    ) -> None:
        self._echo = stub(channel)
        self._request = echo_pb2.EchoRequest(sleep_ms=sleep_ms)
        self._pause, self._timeout, self._limit = pause, timeout, limit
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self.served: Counter[str] = Counter()
        self.errors: list[BaseException] = []
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(threads)]

    def __enter__(self) -> Load:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=self._timeout + 5)
        assert not any(t.is_alive() for t in self._threads), "load threads did not stop"

    def _run(self) -> None:
        deadline = time.monotonic() + self._limit
        while not self._stop.is_set() and time.monotonic() < deadline:
            try:
                pod = self._echo.Unary(self._request, timeout=self._timeout).pod
                with self._lock:
                    self.served[pod] += 1
            except Exception as exc:  # every failure is the finding
                with self._lock:
                    self.errors.append(exc)
            if self._pause:
                self._stop.wait(self._pause)

    @property
    def total(self) -> int:
        with self._lock:
            return sum(self.served.values()) + len(self.errors)

    def wait_for_more(self, calls: int, timeout: float = 10.0) -> None:
        start = self.total
        wait_until(lambda: self.total >= start + calls, timeout, f"{calls} more calls")


# --- Done when ------------------------------------------------------------------------------


def test_failing_pod_gets_at_most_consecutive_failures_calls_and_retries_hide_it(
    pods: FleetFactory, dns_server: Any
) -> None:
    fleet, target = serve(pods, dns_server, 3)
    bad = fleet[0]
    bad.set_mode("unavailable")

    with grpclb.channel(target, policy="round_robin", retries=0) as channel:
        wait_ready(channel, 3)
        threshold = channel.settings.consecutive_failures
        echo = stub(channel)
        outcomes = [attempt(echo) for _ in range(300)]
        stats = channel.stats()
    failed = failures(outcomes)
    bad_calls = bad.stats().calls
    assert threshold == 5
    assert 0 < bad_calls <= threshold, bad_calls
    assert len(failed) == bad_calls
    assert {e.code() for e in failed} == {UNAVAILABLE}
    assert stats.by_address()[bad.address].state == "ejected"
    assert stats.by_address()[bad.address].ejections == 1

    fleet.reset_stats()
    with grpclb.channel(target, policy="round_robin", retries=2) as channel:
        wait_ready(channel, 3)
        echo = stub(channel)
        outcomes = [attempt(echo) for _ in range(300)]
        stats = channel.stats()
    assert failures(outcomes) == []
    assert bad.address not in outcomes
    bad_calls = bad.stats().calls
    assert 0 < bad_calls <= threshold, bad_calls
    assert stats.retries == bad_calls and stats.retries_refused == 0


def test_sigkilled_pod_under_8_threads_fails_no_call_and_leaves_rotation(
    pods: FleetFactory, dns_server: Any
) -> None:
    fleet, target = serve(pods, dns_server, 3, processes=True)
    victim = fleet[2]
    with grpclb.channel(target) as channel:  # defaults: least_request, retries=2
        assert channel.settings.policy == "least_request" and channel.settings.retries == 2
        wait_ready(channel, 3)
        with Load(channel, 8, sleep_ms=5) as load:
            wait_until(lambda: load.served[victim.address] >= 30, 10, "load on the victim")
            victim.kill()
            wait_until(lambda: row(channel, victim.address).state != "ready", 10, "victim out")
            load.wait_for_more(100)  # picks made before it left have ended
            calls_after_leaving = row(channel, victim.address).calls
            load.wait_for_more(600)
            stats = channel.stats()
    dead = stats.by_address()[victim.address]
    assert load.errors == []
    assert victim.returncode == -9
    assert dead.failures <= 20, dead  # tens at most, not one per later pick
    assert dead.calls == calls_after_leaving, dead  # no call went to it after it left
    assert stats.retries >= 1 and stats.retries_refused == 0


def test_max_requests_per_connection_recycles_without_failures(
    pods: FleetFactory, dns_server: Any
) -> None:
    fleet, target = serve(pods, dns_server, 2)
    with grpclb.channel(target, policy="round_robin", max_requests_per_connection=10) as channel:
        wait_ready(channel, 2)
        echo = stub(channel)
        # Calls of a few ms, as over a network: back-to-back 0.5 ms calls can outrun the
        # replacement's connect (1-10 ms on a loaded machine), which the old connection
        # rightly serves meanwhile (make before break), and the pods then see fewer connections.
        outcomes = [attempt(echo, sleep_ms=5) for _ in range(200)]
        stats = channel.stats()
    assert failures(outcomes) == []
    seen = {pod.address: pod.stats().connections for pod in fleet}
    assert all(n >= 9 for n in seen.values()), (seen, stats)
    assert all(e.connections_opened >= 9 for e in stats.endpoints), stats


def test_max_connection_age_recycles_under_steady_load_without_failures(
    pods: FleetFactory, dns_server: Any
) -> None:
    fleet, target = serve(pods, dns_server, 2)
    with grpclb.channel(target, max_connection_age="1s") as channel:
        wait_ready(channel, 2)
        echo = stub(channel)
        # Outlives its connection's age: with no grace, the old connection waits for it.
        long_call = echo.Unary.future(echo_pb2.EchoRequest(sleep_ms=2500), timeout=8)
        with Load(channel, 3, sleep_ms=5) as load:
            time.sleep(5.0)  # the scenario is a duration of load, not a condition
        stats = channel.stats()
        long_reply = long_call.result(timeout=1)
    assert load.errors == []
    assert long_reply.pod in fleet.addresses
    assert load.total > 500
    seen = {pod.address: pod.stats().connections for pod in fleet}
    assert all(n >= 3 for n in seen.values()), (seen, stats)


def test_application_errors_never_eject_a_pod(pods: FleetFactory, dns_server: Any) -> None:
    fleet, target = serve(pods, dns_server, 5)
    picky = fleet[0]
    picky.set_mode("not_found")
    with grpclb.channel(
        target,
        policy="round_robin",
        ejection_interval="200ms",
        success_rate_request_volume=5,
        failure_percentage_ejection=True,
        failure_percentage_request_volume=5,
    ) as channel:
        wait_ready(channel, 5)
        echo = stub(channel)
        # sleep_ms=10 spreads the 100 calls over several ejection intervals.
        outcomes = [attempt(echo, sleep_ms=10) for _ in range(100)]
        stats = channel.stats()
    failed = failures(outcomes)
    assert {e.code() for e in failed} == {grpc.StatusCode.NOT_FOUND}
    assert len(failed) == picky.stats().calls == 20  # its share of 100 over 5 pods
    assert all(e.ejections == 0 and e.state == "ready" for e in stats.endpoints), stats
    assert stats.failures == 0 and stats.retries == 0


# --- outlier ejection -----------------------------------------------------------------------


def when_state(channel: grpclb.Channel, address: str, ejected: bool, timeout: float) -> float:
    """The time at which ``address`` is seen (not) ejected in stats; polled every 5 ms."""
    deadline = time.monotonic() + timeout
    while (row(channel, address).state == "ejected") != ejected:
        assert time.monotonic() < deadline, f"{address} not {'' if ejected else 'un'}ejected"
        time.sleep(0.005)
    return time.monotonic()


def test_ejection_time_is_base_then_doubled_then_decays_back_to_base(
    pods: FleetFactory, dns_server: Any
) -> None:
    fleet, target = serve(pods, dns_server, 3)
    bad = fleet[0]
    bad.set_mode("unavailable")
    with grpclb.channel(
        target,
        policy="round_robin",
        retries=0,
        ejection_interval="300ms",
        base_ejection_time="800ms",
        max_ejection_time="10s",
    ) as channel:
        wait_ready(channel, 3)
        with Load(channel, 4, pause=0.002) as load:
            out = when_state(channel, bad.address, True, 5)
            back = when_state(channel, bad.address, False, 5)
            # Still failing: ejected again within an interval, before the multiplier decays.
            out2 = when_state(channel, bad.address, True, 5)
            bad.set_mode("ok")  # it gets no calls while ejected
            back2 = when_state(channel, bad.address, False, 5)
            time.sleep(1.2)  # several intervals without ejection: the multiplier decays
            bad.set_mode("unavailable")
            out3 = when_state(channel, bad.address, True, 5)
            back3 = when_state(channel, bad.address, False, 5)
        stats = channel.stats()
    first, second, third = back - out, back2 - out2, back3 - out3
    # A return happens on an interval tick: the ejection time plus up to one interval.
    # (Upper bounds leave room for a loaded machine delaying the tick.)
    assert 0.75 <= first <= 1.35, first
    assert 1.55 <= second <= 2.2, second
    assert 0.75 <= third <= 1.35, third
    assert second - first >= 0.4 and second - third >= 0.4, (first, second, third)
    assert stats.by_address()[bad.address].ejections == 3
    assert {e.code() for e in load.errors} == {UNAVAILABLE}


def test_success_rate_ejects_a_pod_failing_a_fraction_of_calls(
    pods: FleetFactory, dns_server: Any
) -> None:
    fleet, target = serve(pods, dns_server, 6)
    flaky = fleet[0]
    with grpclb.channel(
        target,
        policy="round_robin",
        retries=0,
        consecutive_failures=0,  # only the success-rate analysis may eject
        ejection_interval="300ms",
        success_rate_request_volume=10,
    ) as channel:
        wait_ready(channel, 6)
        echo = stub(channel)
        for round_ in range(300):  # about 1 call in 3 to the flaky pod fails
            flaky.set_mode("unavailable" if round_ % 3 == 0 else "ok")
            for _ in range(12):
                attempt(echo)
            if ejected(channel):
                break
        flaky.set_mode("ok")
        assert ejected(channel) == [flaky.address]
        flaky_row = row(channel, flaky.address)
        flaky.reset_stats()
        outcomes = [attempt(echo) for _ in range(50)]
        stats = channel.stats()
    assert 0 < flaky_row.failures < flaky_row.calls, flaky_row  # a fraction, not all
    assert flaky_row.ejections == 1
    assert flaky.stats().calls == 0 and flaky.address not in outcomes
    assert sum(e.ejections for e in stats.endpoints) == 1


def test_failure_percentage_ejects_only_pods_at_or_above_the_threshold(
    pods: FleetFactory, dns_server: Any
) -> None:
    fleet, target = serve(pods, dns_server, 5)
    bad, flaky = fleet[0], fleet[1]
    bad.set_mode("unavailable")
    with grpclb.channel(
        target,
        policy="round_robin",
        retries=0,
        consecutive_failures=0,
        success_rate_ejection=False,
        failure_percentage_ejection=True,
        failure_percentage_request_volume=10,
        ejection_interval="300ms",
        max_ejection_percent=100,  # the cap must not be what spares the flaky pod
    ) as channel:
        wait_ready(channel, 5)
        echo = stub(channel)
        for round_ in range(300):  # the flaky pod fails about 1 call in 3, below 85 %
            flaky.set_mode("unavailable" if round_ % 3 == 0 else "ok")
            for _ in range(10):
                attempt(echo)
            if ejected(channel):
                break
        out = ejected(channel)
        stats = channel.stats()
    rows = stats.by_address()
    assert out == [bad.address], stats
    assert rows[bad.address].ejections == 1
    assert rows[flaky.address].ejections == 0 and rows[flaky.address].failures > 0


def test_max_ejection_percent_caps_ejections_at_one_pod_of_five(
    pods: FleetFactory, dns_server: Any
) -> None:
    fleet, target = serve(pods, dns_server, 5)
    failing = fleet.pods[:3]
    for pod in failing:
        pod.set_mode("unavailable")
    with grpclb.channel(target, policy="round_robin", retries=0) as channel:
        assert channel.settings.max_ejection_percent == 10
        wait_ready(channel, 5)
        echo = stub(channel)
        most = 0
        for _ in range(300):
            attempt(echo)
            most = max(most, len(ejected(channel)))
        stats = channel.stats()
    out = [e for e in stats.endpoints if e.state == "ejected"]
    assert most == 1 and len(out) == 1, stats
    assert out[0].address in {p.address for p in failing}
    still_failing = [p for p in failing if p.address != out[0].address]
    # The two failing pods the cap kept in rotation took their share of the 300 calls.
    assert all(p.stats().calls >= 50 for p in still_failing), [p.stats() for p in fleet]


def test_the_last_pod_is_never_ejected(pods: FleetFactory, dns_server: Any) -> None:
    fleet, target = serve(pods, dns_server, 2)
    for pod in fleet:
        pod.set_mode("unavailable")
    with grpclb.channel(
        target, policy="round_robin", retries=0, max_ejection_percent=100
    ) as channel:
        wait_ready(channel, 2)
        echo = stub(channel)
        outcomes = [attempt(echo) for _ in range(100)]
        stats = channel.stats()
        out = ejected(channel)
        assert len(out) == 1, stats
        (kept,) = [p for p in fleet if p.address not in out]
        kept.reset_stats()
        more = [attempt(echo) for _ in range(20)]
    assert len(failures(outcomes)) == 100 and len(failures(more)) == 20
    assert kept.stats().calls == 20  # the last pod keeps serving, failing or not
    assert not stats.panic


def test_panic_mode_balances_over_all_pods_when_too_few_are_healthy(
    pods: FleetFactory, dns_server: Any
) -> None:
    fleet, target = serve(pods, dns_server, 3)
    failing = fleet.pods[:2]
    for pod in failing:
        pod.set_mode("unavailable")
    with grpclb.channel(
        target,
        policy="round_robin",
        retries=0,
        max_ejection_percent=100,
        ejection_interval="200ms",
        base_ejection_time="1s",
    ) as channel:
        wait_ready(channel, 3)
        echo = stub(channel)
        for _ in range(100):
            attempt(echo)
            if channel.stats().panic:
                break
        stats = channel.stats()
        assert stats.panic and sorted(ejected(channel)) == sorted(p.address for p in failing)
        fleet.reset_stats()
        outcomes = [attempt(echo) for _ in range(30)]
        counts = {p.address: p.stats().calls for p in fleet}
        for pod in failing:
            pod.set_mode("ok")
        wait_until(lambda: not channel.stats().panic, 5, "panic over")
        assert ejected(channel) == []
    assert all(n >= 8 for n in counts.values()), counts  # 10 each: ejected pods too
    assert len(failures(outcomes)) == counts[failing[0].address] + counts[failing[1].address]


# --- retries -----------------------------------------------------------------------------


def test_retry_budget_refuses_retries_and_those_calls_fail_with_the_original_error(
    pods: FleetFactory, dns_server: Any
) -> None:
    fleet, target = serve(pods, dns_server, 2)
    bad, slow = fleet[0], fleet[1]
    bad.set_mode("unavailable")
    slow.set_mode("slow", delay_ms=300)  # retries stay in flight a while
    with grpclb.channel(
        target,
        policy="round_robin",
        consecutive_failures=0,
        retry_budget_min_concurrency=2,
    ) as channel:
        wait_ready(channel, 2)
        echo = stub(channel)
        outcomes: list[Outcome] = []
        lock = threading.Lock()
        for _ in range(3):
            barrier = threading.Barrier(20)

            def one(barrier: threading.Barrier = barrier) -> None:
                barrier.wait(timeout=5)
                outcome = attempt(echo)
                with lock:
                    outcomes.append(outcome)

            threads = [threading.Thread(target=one) for _ in range(20)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(timeout=10)
            assert not any(t.is_alive() for t in threads)
        wait_until(lambda: channel.stats().in_flight == 0, 5, "calls released")
        stats = channel.stats()
    failed = failures(outcomes)
    assert len(outcomes) == 60
    assert stats.retries_refused > 0 and stats.retries > 0
    assert len(failed) == stats.retries_refused, (len(failed), stats)
    assert all(
        e.code() is UNAVAILABLE and f"pod {bad.address} set to unavailable" in e.details()
        for e in failed
    )
    assert bad.stats().calls == stats.retries + stats.retries_refused
    assert slow.stats().calls == len(outcomes) - len(failed)


def test_each_retry_goes_to_a_pod_not_yet_tried(pods: FleetFactory, dns_server: Any) -> None:
    fleet, target = serve(pods, dns_server, 3)
    first, second, good = sorted(fleet, key=lambda p: p.address)  # pick_first's order
    first.set_mode("unavailable")
    second.set_mode("unavailable")
    # pick_first would pick the first pod again for every retry: only avoidance moves them.
    with grpclb.channel(target, policy="pick_first", consecutive_failures=0) as channel:
        wait_ready(channel, 3)
        echo = stub(channel)
        outcomes = [attempt(echo) for _ in range(60)]
        stats = channel.stats()
    assert failures(outcomes) == [] and set(outcomes) == {good.address}
    assert first.stats().calls == 60  # once per call, never again for its retries
    detours = second.stats().calls  # first retries that chose the other failing pod
    assert stats.retries == 60 + detours
    assert 0 < detours < 60  # the first retry picks among both untried pods


def test_futures_are_retried_on_another_pod(pods: FleetFactory, dns_server: Any) -> None:
    fleet, target = serve(pods, dns_server, 3)
    bad = fleet[0]
    bad.set_mode("unavailable")
    with grpclb.channel(target, policy="round_robin", consecutive_failures=0) as channel:
        wait_ready(channel, 3)
        echo = stub(channel)
        served = []
        for _ in range(5):  # batches of 6 stay under the retry budget's floor of 10
            batch = [echo.Unary.future(echo_pb2.EchoRequest(), timeout=5) for _ in range(6)]
            served += [f.result(timeout=10).pod for f in batch]
        wait_until(lambda: channel.stats().in_flight == 0, 5, "calls released")
        stats = channel.stats()
    assert len(served) == 30 and bad.address not in served
    assert bad.stats().calls == stats.retries >= 5
    assert stats.retries_refused == 0


def test_streams_are_retried_before_their_first_message(
    pods: FleetFactory, dns_server: Any
) -> None:
    fleet, target = serve(pods, dns_server, 3)
    bad = fleet[0]
    bad.set_mode("unavailable")
    with grpclb.channel(target, policy="round_robin", consecutive_failures=0) as channel:
        wait_ready(channel, 3)
        echo = stub(channel)
        streams = [
            list(echo.ServerStream(echo_pb2.EchoRequest(count=5), timeout=5)) for _ in range(9)
        ]
        stats = channel.stats()
    for replies in streams:
        assert [r.index for r in replies] == [0, 1, 2, 3, 4]
        assert len({r.pod for r in replies}) == 1 and replies[0].pod != bad.address
    assert bad.stats().calls == stats.retries >= 1


def test_streams_survive_a_sigkill_before_their_first_message_but_not_after(
    pods: FleetFactory, dns_server: Any
) -> None:
    fleet, target = serve(pods, dns_server, 3, processes=True)
    victim = fleet[0]
    with grpclb.channel(target, policy="round_robin") as channel:
        wait_ready(channel, 3)
        echo = stub(channel)
        # One stream per pod (round robin) that has delivered its first message...
        started = [
            echo.ServerStream(echo_pb2.EchoRequest(count=3, sleep_ms=300), timeout=10)
            for _ in range(3)
        ]
        firsts = [next(s) for s in started]
        assert sorted(r.pod for r in firsts) == sorted(fleet.addresses)
        # ... and one per pod that is still waiting for it.
        waiting = [
            echo.ServerStream(echo_pb2.EchoRequest(count=3, sleep_ms=600), timeout=10)
            for _ in range(3)
        ]
        wait_until(lambda: victim.stats().in_flight == 2, 5, "both streams on the victim")
        victim.kill()
        delivered = [list(s) for s in waiting]
        cut = started[[r.pod for r in firsts].index(victim.address)]
        with pytest.raises(grpc.RpcError) as raised:
            list(cut)
        survivors = [s for s in started if s is not cut]
        rest = [list(s) for s in survivors]
    for replies in delivered:
        assert [r.index for r in replies] == [0, 1, 2]
        assert replies[0].pod != victim.address
    assert raised.value.code() is UNAVAILABLE  # what was read cannot be replayed
    assert all([r.index for r in replies] == [1, 2] for replies in rest)


# --- slow and hanging pods ------------------------------------------------------------------


def test_least_request_sends_a_slow_pod_fewer_calls(pods: FleetFactory, dns_server: Any) -> None:
    fleet, target = serve(pods, dns_server, 3)
    slow = fleet[0]
    slow.set_mode("slow", delay_ms=200)
    with grpclb.channel(target) as channel:  # least_request
        wait_ready(channel, 3)
        echo = stub(channel)
        outcomes: list[Outcome] = []
        lock = threading.Lock()

        def worker() -> None:
            for _ in range(20):
                outcome = attempt(echo, sleep_ms=5)
                with lock:
                    outcomes.append(outcome)

        threads = [threading.Thread(target=worker) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=30)
        assert not any(t.is_alive() for t in threads)
    counts = Counter(outcomes)
    assert failures(outcomes) == [] and len(outcomes) == 160
    fast = [counts[p.address] for p in fleet.pods[1:]]
    assert all(n > 3 * counts[slow.address] for n in fast), counts


def test_hanging_pod_calls_end_at_their_deadline_without_retries(
    pods: FleetFactory, dns_server: Any
) -> None:
    fleet, target = serve(pods, dns_server, 2)
    hung = fleet[0]
    hung.set_mode("hang")
    with grpclb.channel(
        target,
        policy="round_robin",
        consecutive_failures=0,
        retry_codes="UNAVAILABLE,DEADLINE_EXCEEDED",  # even a retryable code stops at the deadline
    ) as channel:
        wait_ready(channel, 2)
        echo = stub(channel)
        timed: list[tuple[Outcome, float]] = []
        for _ in range(6):
            started = time.monotonic()
            timed.append((attempt(echo, timeout=0.3), time.monotonic() - started))
        started = time.monotonic()
        futures = [echo.Unary.future(echo_pb2.EchoRequest(), timeout=0.3) for _ in range(4)]
        future_errors = [f.exception(timeout=5) for f in futures]
        futures_took = time.monotonic() - started
        wait_until(lambda: channel.stats().in_flight == 0, 5, "in-flight back to 0")
        wait_until(lambda: hung.stats().in_flight == 0, 5, "the pod's handlers ended")
        stats = channel.stats()
    expired = [(o, t) for o, t in timed if isinstance(o, grpc.RpcError)]
    assert len(expired) == 3
    assert all(o.code() is grpc.StatusCode.DEADLINE_EXCEEDED for o, _ in expired)
    assert all(0.28 <= t < 0.6 for _, t in expired), expired  # a retry would need 0.3 s more
    errors = [e for e in future_errors if e is not None]
    assert len(errors) == 2 and futures_took < 0.6
    assert all(e.code() is grpc.StatusCode.DEADLINE_EXCEEDED for e in errors)
    assert hung.stats().calls == 5  # one attempt per expired call, no retry reached it
    assert stats.retries == 0 and stats.in_flight == 0


# --- circuit breaking -------------------------------------------------------------------------


def test_max_requests_refuses_a_call_over_the_limit_at_once(
    pods: FleetFactory, dns_server: Any
) -> None:
    fleet, target = serve(pods, dns_server, 2)
    with grpclb.channel(target, max_requests=2) as channel:
        wait_ready(channel, 2)
        echo = stub(channel)
        holding = [
            echo.Unary.future(echo_pb2.EchoRequest(sleep_ms=1000), timeout=5) for _ in range(2)
        ]
        wait_until(lambda: channel.stats().in_flight == 2, 5, "two calls in flight")
        started = time.monotonic()
        refused = attempt(echo)
        took = time.monotonic() - started
        refused_future = echo.Unary.future(echo_pb2.EchoRequest(), timeout=5).exception(timeout=1)
        refused_stream = echo.ServerStream(echo_pb2.EchoRequest(count=1), timeout=5)
        with pytest.raises(grpc.RpcError) as raised:
            list(refused_stream)
        calls_seen = sum(p.stats().calls for p in fleet)
        assert all(f.result(timeout=5).pod for f in holding)
        after = attempt(echo)
        stats = channel.stats()
    assert isinstance(refused, grpc.RpcError) and took < 0.25  # the held calls last 1 s
    for error in (refused, refused_future, raised.value):
        assert error.code() is UNAVAILABLE
        assert "max_requests=2" in error.details() and "circuit breaker" in error.details()
    assert calls_seen == 2  # the refused calls never reached a pod
    assert stats.circuit_breaker_refusals == 3 and stats.retries == 0
    assert isinstance(after, str)


# --- recycling -----------------------------------------------------------------------------


def test_max_connection_age_grace_cancels_a_call_that_outlives_it(
    pods: FleetFactory, dns_server: Any
) -> None:
    fleet, target = serve(pods, dns_server, 1)
    with grpclb.channel(
        target, max_connection_age="1s", max_connection_age_grace="600ms"
    ) as channel:
        wait_ready(channel, 1)
        echo = stub(channel)
        opened = time.monotonic()
        long_call = echo.Unary.future(echo_pb2.EchoRequest(sleep_ms=4000), timeout=8)
        with Load(channel, 1, pause=0.01) as load:
            error = long_call.exception(timeout=6)
            ended = time.monotonic() - opened
        wait_until(lambda: channel.stats().in_flight == 0, 5, "calls released")
    assert error is not None and error.code() is grpc.StatusCode.CANCELLED, error
    # Age 0.9-1.1 s plus 0.6 s of grace: neither at once on recycling nor after the 4 s call.
    assert 1.35 <= ended <= 2.8, ended
    assert load.errors == [] and load.total > 50  # short calls never noticed the recycling
    assert fleet[0].stats().connections >= 2


def test_recycling_rereads_dns_so_a_new_pod_is_found_despite_a_long_refresh(
    pods: FleetFactory, dns_server: Any
) -> None:
    fleet, target = serve(pods, dns_server, 2)
    with grpclb.channel(
        target,
        policy="round_robin",
        dns_refresh_interval="60s",
        dns_respect_ttl=False,
        dns_min_refresh_interval="100ms",
        max_requests_per_connection=20,
    ) as channel:
        wait_ready(channel, 2)
        (new,) = fleet.add(1)
        dns_server.set_records(SERVICE_NAME, [p.host for p in fleet])
        echo = stub(channel)
        outcomes = []
        for _ in range(2000):
            outcomes.append(attempt(echo))
            if outcomes[-1] == new.address:
                break
        stats = channel.stats()
    assert failures(outcomes) == []
    assert outcomes[-1] == new.address, stats
    assert stats.resolutions >= 2


# --- broken connections ---------------------------------------------------------------------


@pytest.fixture
def revived() -> Iterator[list[ProcessPod]]:
    """Pods a test starts itself; stopped after it."""
    started: list[ProcessPod] = []
    try:
        yield started
    finally:
        for pod in started:
            pod.stop()


def test_a_pod_whose_connection_is_down_is_skipped_at_once_and_rejoins_when_back(
    pods: FleetFactory, dns_server: Any, revived: list[ProcessPod]
) -> None:
    fleet, target = serve(pods, dns_server, 3, processes=True)
    victim = fleet[2]
    host, port = victim.host, victim.port
    with grpclb.channel(
        target,
        policy="round_robin",
        retries=0,
        consecutive_failures=0,  # no ejection: only the connection state takes it out
        options=[
            ("grpc.initial_reconnect_backoff_ms", 200),
            ("grpc.max_reconnect_backoff_ms", 500),
        ],
    ) as channel:
        wait_ready(channel, 3)
        echo = stub(channel)
        victim.kill()
        wait_until(lambda: row(channel, victim.address).state != "ready", 5, "victim down")
        outcomes = [attempt(echo) for _ in range(100)]
        down = row(channel, victim.address)
        revived.append(ProcessPod(host, port))
        wait_until(lambda: row(channel, victim.address).state == "ready", 10, "victim back")
        back = [attempt(echo) for _ in range(30)]
    assert failures(outcomes) == [] and victim.address not in outcomes
    assert down.ejections == 0
    assert failures(back) == [] and Counter(back)[victim.address] >= 8


# --- cancelling or closing during a retry's backoff ------------------------------------------
# A backoff of 0..2 s (full jitter) leaves time to act while a retry waits; a backoff too
# short to act in is simply tried again, so the outcome never depends on the draw.

SLOW_BACKOFF = {"retry_backoff_base": "2s", "retry_backoff_max": "2s", "consecutive_failures": 0}
TRIES = 3


def in_backoff(channel: grpclb.Channel, before: Any) -> bool:
    """Waits for the call's retry to be granted; True if its next attempt has not started."""
    wait_until(lambda: channel.stats().retries > before.retries, 5, "a retry granted")
    return bool(channel.stats().calls == before.calls + 1)


def run_call(echo: Any, style: str, outcome: list[Any]) -> None:
    """One call to completion in ``style``; appends its result or what it raised."""
    try:
        if style == "future":
            future = echo.Unary.future(echo_pb2.EchoRequest(), timeout=20)
            outcome.append(future.exception(timeout=5))
        elif style == "blocking":
            outcome.append(echo.Unary(echo_pb2.EchoRequest(), timeout=20))
        else:
            request = echo_pb2.EchoRequest(count=1)
            outcome.append([r.pod for r in echo.ServerStream(request, timeout=20)])
    except BaseException as exc:  # what escapes is the finding
        outcome.append(exc)


def test_cancelling_a_future_during_its_retry_backoff_cancels_it(
    pods: FleetFactory, dns_server: Any
) -> None:
    fleet, target = serve(pods, dns_server, 2)
    good = max(fleet, key=lambda p: p.address)
    min(fleet, key=lambda p: p.address).set_mode("unavailable")  # pick_first's choice
    with grpclb.channel(target, policy="pick_first", **SLOW_BACKOFF) as channel:
        wait_ready(channel, 2)
        echo = stub(channel)
        for _ in range(TRIES):
            before, good_before = channel.stats(), good.stats().calls
            future = echo.Unary.future(echo_pb2.EchoRequest(), timeout=20)
            if in_backoff(channel, before):
                break
            future.result(timeout=10)
        else:
            pytest.fail("no backoff was long enough to cancel during it")
        assert future.cancel()
        done = wait_until_or_false(future.done, 3.0)  # longer than the longest backoff
        good_calls = good.stats().calls - good_before
    assert done, "the cancelled future never completed"
    assert future.cancelled()
    with pytest.raises(grpc.FutureCancelledError):
        future.result(timeout=1)
    assert good_calls == 0


def test_cancelling_a_stream_during_its_retry_backoff_cancels_it(
    pods: FleetFactory, dns_server: Any
) -> None:
    fleet, target = serve(pods, dns_server, 2)
    min(fleet, key=lambda p: p.address).set_mode("unavailable")  # pick_first's choice
    with grpclb.channel(target, policy="pick_first", **SLOW_BACKOFF) as channel:
        wait_ready(channel, 2)
        echo = stub(channel)
        for _ in range(TRIES):
            before = channel.stats()
            stream = echo.ServerStream(echo_pb2.EchoRequest(count=3), timeout=20)
            outcome: list[Any] = []

            def read(stream: Any = stream, outcome: list[Any] = outcome) -> None:
                try:
                    outcome.append([r.pod for r in stream])
                except grpc.RpcError as error:
                    outcome.append(error)

            reader = threading.Thread(target=read)
            reader.start()
            if in_backoff(channel, before):
                break
            reader.join(timeout=10)
        else:
            pytest.fail("no backoff was long enough to cancel during it")
        stream.cancel()
        reader.join(timeout=5)  # longer than the longest backoff
        assert not reader.is_alive()
    (result,) = outcome
    assert isinstance(result, grpc.RpcError), f"the cancelled stream went on and read {result}"
    assert result.code() is grpc.StatusCode.CANCELLED


@pytest.mark.parametrize("style", ["future", "blocking", "stream"])
def test_closing_the_channel_during_a_retry_backoff_ends_the_call_as_an_rpc_error(
    pods: FleetFactory, dns_server: Any, style: str
) -> None:
    fleet, target = serve(pods, dns_server, 1)
    fleet[0].set_mode("unavailable")
    for _ in range(TRIES):
        channel = grpclb.channel(target, **SLOW_BACKOFF)
        outcome: list[Any] = []
        caller = threading.Thread(target=run_call, args=(stub(channel), style, outcome))
        try:
            wait_ready(channel, 1)
            before = channel.stats()
            caller.start()
            paused = in_backoff(channel, before)
        finally:
            channel.close()
        caller.join(timeout=8)  # the longest backoff, then the future's own wait
        assert not caller.is_alive()
        if paused:
            break
    else:
        pytest.fail("no backoff was long enough to close the channel during it")
    (result,) = outcome
    assert isinstance(result, grpc.RpcError), f"the call ended with {result!r}"
    assert result.code() in (grpc.StatusCode.CANCELLED, UNAVAILABLE)
