"""``grpclb demo``: the problem and the fix, measured live on this machine.

A claim that "grpcio pins every call to one pod" is easy to doubt and cheap to
show: real grpcio servers on 127.0.0.2.., a real DNS server answering the
headless name, the same calls through a generated stub, first over a plain
grpcio channel and then over grpclb with each policy, counted per pod. Then
the two moments that matter in production: a pod joining (how long until it
takes calls) and a pod leaving under load (how many calls fail).
"""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from types import FrameType
from typing import Any

import grpc

import grpclb
from grpclb.tools.cli import format_duration, render_table

POLICIES = ("round_robin", "least_request", "random", "pick_first", "ring_hash", "maglev")
HASH_KEY = "x-user"
USERS = 100
REFRESH = 1.0  # dns_refresh_interval of the scale acts: short, so the demo stays short
READY_TIMEOUT_S = 10.0
CALL_TIMEOUT_S = 5.0
BAR_WIDTH = 40
LOAD_THREADS = 4
NOTES = {
    "round_robin": "each pod in turn",
    "least_request": "fewest calls in flight of 2 random pods",
    "random": "uniformly random, so uneven at small counts",
    "pick_first": "one pod by design: failover, not balancing",
    "ring_hash": f"consistent hash of {HASH_KEY} (user-0..user-{USERS - 1})",
    "maglev": f"Maglev table on {HASH_KEY} (user-0..user-{USERS - 1})",
}


def say(text: str = "") -> None:
    print(text, flush=True)


def run(pods: int, calls: int) -> int:
    """Runs the demo; every pod and the DNS server are stopped however it ends."""
    try:
        from grpclb.testing import DnsmasqNotFound, DnsServer, PodFleet
    except ImportError as error:
        hint = "the demo needs the testing extra: pip install 'grpclb-client[testing]'"
        print(f"grpclb demo: error: {error}; {hint}", file=sys.stderr, flush=True)
        return 2
    try:
        dns = DnsServer()
    except DnsmasqNotFound as error:  # its message carries the setup hint
        print(f"grpclb demo: error: {error}", file=sys.stderr, flush=True)
        return 2
    with contextlib.ExitStack() as cleanup, _sigterm_interrupts():
        cleanup.callback(dns.stop)
        dns.start()
        fleet = cleanup.enter_context(PodFleet(pods))
        _Demo(fleet, dns, calls).run()
    return 0


@contextlib.contextmanager
def _sigterm_interrupts() -> Iterator[None]:
    """SIGTERM cleans up like Ctrl-C: a dnsmasq child would otherwise outlive us."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


class _Demo:
    """The acts of the demo, sharing one fleet, one DNS server and one stub factory."""

    def __init__(self, fleet: Any, dns: Any, calls: int) -> None:
        from grpclb.testing import SERVICE_NAME, echo_pb2, echo_pb2_grpc

        self.fleet, self.dns, self.calls = fleet, dns, calls
        self.name = SERVICE_NAME
        self.request = echo_pb2.EchoRequest
        self.stub_class: Any = echo_pb2_grpc.EchoStub
        self.target = dns.target(SERVICE_NAME, fleet.port)

    def publish(self) -> None:
        self.dns.set_records(self.name, [pod.host for pod in self.fleet])

    def run(self) -> None:
        self.publish()
        hosts = [pod.host for pod in self.fleet]
        say(
            f"grpclb demo: {len(hosts)} pods (grpcio servers) on {hosts[0]}..{hosts[-1]} "
            f"port {self.fleet.port}"
        )
        say(f"dnsmasq on {self.dns.authority} answers {self.name} like a headless Service")
        say(f"each act sends {self.calls} unary calls through the generated Echo stub")
        say(f"target: {self.target}")
        self.plain()
        for policy in POLICIES:
            self.balanced(policy)
        with grpclb.channel(
            self.target, policy="round_robin", retries=0, dns_refresh_interval=REFRESH
        ) as channel:
            self.wait_ready(channel, len(self.fleet))
            new = self.scale_up(channel)
            self.scale_down(channel, new)

    def send(
        self, channel: grpc.Channel, calls: int, owners: dict[str, set[str]] | None = None
    ) -> Counter[str]:
        """Sequential calls, so round_robin's exactness shows; ``owners`` gets key -> pods."""
        stub = self.stub_class(channel)
        counts: Counter[str] = Counter()
        for i in range(calls):
            key = f"user-{i % USERS}"
            metadata = ((HASH_KEY, key),) if owners is not None else None
            request = self.request(message=str(i))
            pod = stub.Unary(request, timeout=CALL_TIMEOUT_S, metadata=metadata).pod
            counts[pod] += 1
            if owners is not None:
                owners.setdefault(key, set()).add(pod)
        return counts

    def show(
        self, title: str, counts: Counter[str], seconds: float, about: str = "", extra: str = ""
    ) -> None:
        """A per-pod table; ``about`` explains the policy, ``extra`` adds to the summary."""
        addresses = sorted({*self.fleet.addresses, *counts}, key=_host_order)
        total = sum(counts.values()) or 1
        rows = [
            [a, str(counts[a]), f"{100 * counts[a] / total:.1f}%", _bar(counts[a] / total)]
            for a in addresses
        ]
        used = [counts[a] for a in addresses]
        say()
        say(f"[{title}]" + (f" {about}" if about else ""))
        say(render_table(["POD", "CALLS", "SHARE", ""], rows, right=(1, 2), indent="  "))
        say(
            f"  pods used: {sum(1 for n in used if n)} of {len(addresses)}, "
            f"max {max(used)}, min {min(used)} ({sum(used)} calls in {format_duration(seconds)})"
            + (f"; {extra}" if extra else "")
        )

    def wait_ready(self, channel: grpclb.Channel, count: int) -> None:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while (ready := _ready(channel)) < count:
            if time.monotonic() > deadline:
                raise RuntimeError(f"only {ready} of {count} pods ready after {READY_TIMEOUT_S}s")
            time.sleep(0.01)

    def plain(self) -> None:
        with grpc.insecure_channel(self.target) as channel:
            grpc.channel_ready_future(channel).result(timeout=READY_TIMEOUT_S)
            started = time.monotonic()
            counts = self.send(channel, self.calls)
            about = "grpcio's own DNS resolver: one HTTP/2 connection carries every call"
            self.show("plain grpcio", counts, time.monotonic() - started, about)

    def balanced(self, policy: str) -> None:
        keyed = policy in ("ring_hash", "maglev")
        settings: dict[str, Any] = {"policy": policy}
        if keyed:
            settings["hash_key"] = HASH_KEY
        owners: dict[str, set[str]] | None = {} if keyed else None
        with grpclb.channel(self.target, **settings) as channel:
            self.wait_ready(channel, len(self.fleet))
            started = time.monotonic()
            counts = self.send(channel, self.calls, owners)
            elapsed = time.monotonic() - started
        extra = ""
        if owners:  # the point of hashing: a user always lands on the same pod
            sticky = sum(1 for pods in owners.values() if len(pods) == 1)
            extra = f"{sticky} of {len(owners)} users always on one pod"
        self.show(f"grpclb {policy}", counts, elapsed, NOTES.get(policy, ""), extra)

    def scale_up(self, channel: grpclb.Channel) -> str:
        say()
        (pod,) = self.fleet.add(1)
        self.publish()
        added = time.monotonic()
        stub = self.stub_class(channel)
        say(f"[scale up] {pod.address} added to DNS (dns_refresh_interval {REFRESH:g}s)")
        while stub.Unary(self.request(), timeout=CALL_TIMEOUT_S).pod != pod.address:
            if time.monotonic() - added > REFRESH + READY_TIMEOUT_S:
                raise RuntimeError(f"{pod.address} got no call {READY_TIMEOUT_S}s after joining")
            time.sleep(0.005)
        took = time.monotonic() - added
        say(f"  first call on the new pod {took:.2f} s after it joined DNS")
        self.wait_ready(channel, len(self.fleet))
        started = time.monotonic()
        counts = self.send(channel, self.calls)
        self.show("after scale up, round_robin", counts, time.monotonic() - started)
        return str(pod.address)

    def scale_down(self, channel: grpclb.Channel, address: str) -> None:
        say()
        victim = next(pod for pod in self.fleet if pod.address == address)
        say(
            f"[scale down] {address} removed from DNS while {LOAD_THREADS} threads send calls "
            "(round_robin, retries off)"
        )
        load = _Load(self.stub_class(channel), self.request)
        with load.running():
            load.wait_for(lambda: load.served[address] >= 20)
            removed = time.monotonic()
            self.dns.set_records(self.name, [p.host for p in self.fleet if p is not victim])
            deadline = removed + REFRESH + READY_TIMEOUT_S
            while address in {e.address for e in channel.stats().endpoints}:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{address} still in the channel after {deadline:.0f}s")
                time.sleep(0.005)
            drained = time.monotonic() - removed
            self.fleet.remove(victim)
            before = load.total()
            load.wait_for(lambda: load.total() >= before + 100)
        say(f"  out of rotation and drained {drained:.2f} s after leaving DNS; then stopped")
        self.show("during scale down", load.served, time.monotonic() - load.started)
        say(f"  failed calls: {len(load.errors)} of {load.total() + len(load.errors)}")
        for error in load.errors[:3]:
            say(f"    {error!r}")


class _Load:
    """Background callers: a pod must leave while calls are in flight, not between them."""

    def __init__(self, stub: Any, request: Any) -> None:
        self.stub, self.request = stub, request
        self.served: Counter[str] = Counter()
        self.errors: list[BaseException] = []
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.started = time.monotonic()

    def total(self) -> int:
        with self.lock:
            return sum(self.served.values())

    def wait_for(self, done: Any, timeout: float = READY_TIMEOUT_S) -> None:
        deadline = time.monotonic() + timeout
        while not done():
            if time.monotonic() > deadline or self.errors:
                return  # the report shows what happened; never hang the demo
            time.sleep(0.005)

    def loop(self) -> None:
        while not self.stop.is_set():
            try:
                reply = self.stub.Unary(self.request(sleep_ms=10), timeout=CALL_TIMEOUT_S)
                with self.lock:
                    self.served[reply.pod] += 1
            except grpc.RpcError as error:
                self.errors.append(error)

    @contextlib.contextmanager
    def running(self) -> Iterator[None]:
        threads = [threading.Thread(target=self.loop, daemon=True) for _ in range(LOAD_THREADS)]
        self.started = time.monotonic()
        for thread in threads:
            thread.start()
        try:
            yield
        finally:
            self.stop.set()
            for thread in threads:
                thread.join(CALL_TIMEOUT_S + 1)


def _ready(channel: grpclb.Channel) -> int:
    return sum(1 for e in channel.stats().endpoints if e.state == "ready")


def _bar(share: float) -> str:
    return "#" * round(BAR_WIDTH * share)


def _host_order(address: str) -> tuple[int, ...]:
    """127.0.0.10 after 127.0.0.9: pods listed in the order they were started."""
    host, _, port = address.rpartition(":")
    return (*(int(part) for part in host.split(".") if part.isdigit()), int(port or 0))
