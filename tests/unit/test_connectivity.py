"""The sync flavour's connectivity monitor: one thread reads every pod channel's state.

Readers here are plain functions over a dict, so sweeps are driven by hand
and nothing depends on timing; one test runs the real thread, waiting on events.
"""

from __future__ import annotations

import threading

import grpc
import pytest

from grpclb.sync.connectivity import ConnectivityMonitor, Watch, next_interval

State = grpc.ChannelConnectivity


class FakeChannel:
    """A pod channel's state, settable by the test; reading a closed one raises as grpcio does."""

    def __init__(self, state: State = State.IDLE) -> None:
        self.state, self.closed, self.reads = state, False, 0

    def read(self) -> State:
        self.reads += 1
        if self.closed:
            raise ValueError("Cannot invoke RPC: Channel closed!")
        return self.state


def watched(monitor: ConnectivityMonitor, channel: FakeChannel) -> tuple[Watch, list[State]]:
    seen: list[State] = []
    return monitor.watch(channel.read, seen.append, "pod"), seen


@pytest.fixture
def monitor() -> ConnectivityMonitor:
    return ConnectivityMonitor(threaded=False)  # swept by hand only


def test_the_first_state_then_only_changes_are_delivered(monitor: ConnectivityMonitor) -> None:
    channel = FakeChannel(State.CONNECTING)
    watch, seen = watched(monitor, channel)
    monitor.sweep([watch])
    monitor.sweep()
    assert seen == [State.CONNECTING]
    channel.state = State.READY
    assert monitor.sweep() == 1
    channel.state = State.IDLE
    monitor.sweep()
    monitor.sweep()
    assert seen == [State.CONNECTING, State.READY, State.IDLE]
    assert repr(watch) == "<Watch pod IDLE>"


def test_unwatch_stops_deliveries_and_reads(monitor: ConnectivityMonitor) -> None:
    channel = FakeChannel(State.READY)
    watch, seen = watched(monitor, channel)
    monitor.sweep([watch])
    monitor.unwatch(watch)
    reads = channel.reads
    channel.state = State.IDLE
    monitor.sweep()
    assert seen == [State.READY] and channel.reads == reads and len(monitor) == 0
    assert repr(watch) == "<Watch pod READY stopped>"


def test_a_channel_closed_without_unwatch_is_dropped(monitor: ConnectivityMonitor) -> None:
    channel, other = FakeChannel(State.READY), FakeChannel(State.READY)
    watch, seen = watched(monitor, channel)
    _, other_seen = watched(monitor, other)
    channel.closed = True
    monitor.sweep()
    assert seen == [] and other_seen == [State.READY]
    assert len(monitor) == 1 and not watch.active


def test_a_raising_callback_does_not_stop_the_other_deliveries(
    monitor: ConnectivityMonitor,
) -> None:
    def fail(state: State) -> None:
        raise RuntimeError("boom")

    monitor.watch(FakeChannel(State.READY).read, fail, "bad")
    _, seen = watched(monitor, FakeChannel(State.READY))
    assert monitor.sweep() == 2
    assert seen == [State.READY]


def test_a_callback_may_watch_and_unwatch_during_a_sweep(monitor: ConnectivityMonitor) -> None:
    """A replacement connection is watched from inside the old one's callback."""
    old, new = FakeChannel(State.READY), FakeChannel(State.CONNECTING)
    seen: list[State] = []
    watches: list[Watch] = []

    def on_old(state: State) -> None:
        watches.append(monitor.watch(new.read, seen.append, "new"))
        monitor.unwatch(watches[0])

    watches.append(monitor.watch(old.read, on_old, "old"))
    monitor.sweep()
    monitor.sweep()
    assert seen == [State.CONNECTING] and len(monitor) == 1


@pytest.mark.parametrize(
    ("sweep_cpu", "expected"),
    [
        (0.0, 0.02),  # a few pods: the floor
        (0.0002, 0.02),  # 0.2 ms per sweep: 1 % of a core at the floor
        (0.001, 0.05),  # 1 ms per sweep (about 1,000 pods): spaced to stay at 2 %
        (0.01, 0.2),  # never slower than grpcio's own polling
    ],
)
def test_the_cadence_keeps_sweeps_within_their_share_of_a_core(
    sweep_cpu: float, expected: float
) -> None:
    assert next_interval(sweep_cpu, 0.02, 0.2, 0.02) == pytest.approx(expected)


def test_the_thread_delivers_the_first_state_then_changes_and_ends_when_unwatched() -> None:
    monitor = ConnectivityMonitor(min_interval=0.001, max_interval=0.001)
    channel = FakeChannel(State.CONNECTING)
    states = {State.CONNECTING: threading.Event(), State.READY: threading.Event()}

    def seen(state: State) -> None:
        states[state].set()

    watch = monitor.watch(channel.read, seen, "pod")
    try:
        assert states[State.CONNECTING].wait(timeout=10)
        channel.state = State.READY
        assert states[State.READY].wait(timeout=10)
        assert monitor.sweeps >= 1
        assert repr(monitor).startswith("<ConnectivityMonitor [1 watched, every 1 ms,")
    finally:
        monitor.unwatch(watch)
    thread = monitor._thread
    if thread is not None:
        thread.join(timeout=10)
        assert not thread.is_alive()
    assert monitor._thread is None  # the next watch starts a new one
