"""The sync channel: a ``grpc.Channel`` that balances each call across pods.

Around the shared balancer core this module adds only what is sync-specific:
per-pod ``grpc.Channel`` objects, watched by the process's one connectivity
thread (``grpclb.sync.connectivity``), and one background thread per channel
that resolves DNS on its schedule, closes drained connections and runs the
balancer's timers.
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
import threading
import time
import weakref
from collections.abc import Callable, Sequence
from typing import Any

import grpc
from opentelemetry.metrics import MeterProvider

from grpclb._grpcio import connectivity_reader, request_connection
from grpclb.config.settings import Settings
from grpclb.core.admission import attempt_or_wait
from grpclb.core.attempt import Attempt
from grpclb.core.balancer import Balancer, Clock
from grpclb.core.endpoints import Connection, Endpoint
from grpclb.errors import cancelled_locally
from grpclb.resolver import RefreshSchedule, Resolver
from grpclb.shell import ChannelOptions, ChannelShell, dial_address
from grpclb.stats import ChannelStats, check_min_ready, enough_ready, not_ready_error
from grpclb.sync import calls
from grpclb.sync.connectivity import MONITOR
from grpclb.sync.health import HealthWatch
from grpclb.sync.pod_channels import Subscription, close_all, ignore_state, multicallable

log = logging.getLogger("grpclb")
# Set in a child process after fork(), so the call path checks its process id only then.
_forked = False


def _mark_forked() -> None:
    global _forked
    _forked = True


os.register_at_fork(after_in_child=_mark_forked)


class Channel(ChannelShell, grpc.Channel):  # type: ignore[misc]
    """A drop-in ``grpc.Channel`` over every pod of a headless service."""

    def __init__(
        self,
        target: str,
        *,
        credentials: grpc.ChannelCredentials | None = None,
        options: ChannelOptions = (),
        settings: Settings | None = None,
        meter_provider: MeterProvider | None = None,
        clock: Clock = time.monotonic,
        rng: random.Random | None = None,
    ) -> None:
        self._pid = os.getpid()
        self._set_up(target, credentials, options, settings, meter_provider, clock, rng)
        self._changed = threading.Condition()
        self._version = 0
        self._dirty = False
        self._to_close: list[Connection] = []
        # Calls between attempts (sync.logical.BackoffTimer, a stream's reader): close()
        # fires them. Guarded by _changed: threads add and drop them while close() looks.
        self._backoffs: weakref.WeakSet[Any] = weakref.WeakSet()
        self._subscribers: dict[Callable[[grpc.ChannelConnectivity], None], Any] = {}
        self._resolver = Resolver(
            self._target, self._settings.dns_timeout, self._settings.hosts_file
        )
        # The thread holds the channel weakly, so a channel dropped without close() is
        # collected (and closed by __del__), as a plain grpcio channel would be.
        self._thread = threading.Thread(
            target=_maintain_while_alive,
            args=(weakref.ref(self), self._changed, self._new_schedule()),
            name=f"grpclb {self._target.text}",
            daemon=True,
        )
        self._thread.start()

    _label = "grpclb.Channel"
    _calls = calls

    # --- grpc.Channel -----------------------------------------------------------

    def subscribe(
        self, callback: Callable[[grpc.ChannelConnectivity], None], try_to_connect: bool = False
    ) -> None:
        """Connectivity of the whole channel: READY while any pod is."""
        with self._changed:
            self._subscribers[callback] = None  # None: the current state is still owed
        self.wake()

    def unsubscribe(self, callback: Callable[[grpc.ChannelConnectivity], None]) -> None:
        with self._changed:
            self._subscribers.pop(callback, None)

    def close(self) -> None:
        """Close every pod's connection; calls still in flight are cancelled, as grpcio does."""
        if self._balancer.closed:
            return
        connections = self._balancer.shutdown()
        self.wake()  # ends blocking calls' backoffs (``_backoff``)
        with self._changed:
            between_attempts = list(self._backoffs)
        for waiting in between_attempts:
            waiting.fire()  # and futures' and streams': each finds the channel closed
        if threading.current_thread() is not self._thread:
            self._thread.join(timeout=1.0)  # a thread stuck in a DNS query exits after it
        closers = self._close_in_background([*connections, *self._take_to_close()])
        for closer in closers:
            closer.join(timeout=5.0)

    def wait_for_endpoints(
        self, min_ready: int | None = 1, timeout: float | None = None
    ) -> ChannelStats:
        """Block until ``min_ready`` pods are READY (None: every pod of the DNS answer).

        ``grpc.channel_ready_future`` fires when the first pod connects; calls then
        go to that pod alone until the others connect. Returns the stats that
        satisfied the wait; raises ``TimeoutError`` naming every pod's state when
        ``timeout`` seconds pass, and ``ValueError`` if the channel is closed.
        """
        check_min_ready(min_ready)
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            if self._balancer.closed:
                raise ValueError("grpclb.Channel is closed: no pod will become ready")
            version = self._version  # read before looking: a later change wakes the wait
            stats = self.stats()
            if enough_ready(stats, min_ready):
                return stats
            left = 1.0 if deadline is None else deadline - time.monotonic()
            if left <= 0:
                raise not_ready_error(stats, min_ready, timeout or 0.0)
            with self._changed:
                if self._version == version:
                    self._changed.wait(timeout=min(left, 1.0))

    def __enter__(self) -> Channel:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __del__(self) -> None:
        # The garbage collector may run this on a thread that holds the balancer's lock
        # (any allocation can trigger it): take no lock here, hand the work to a thread.
        balancer = getattr(self, "_balancer", None)
        if balancer is not None and not balancer.closed:
            with contextlib.suppress(Exception):  # e.g. at interpreter exit
                threading.Thread(target=_shut_down, args=(balancer,), daemon=True).start()

    # --- the call path's helpers (used by grpclb.sync.calls) ------------------------

    def _check_usable(self) -> None:
        """Raise as grpcio does for a channel that can take no call (closed, or forked)."""
        if _forked and os.getpid() != self._pid:
            # grpcio channels do not survive fork(); failing is better than hanging.
            raise ValueError(
                "grpclb.Channel was created in process "
                f"{self._pid} and cannot be used after fork(); create one in the child"
            )
        if self._balancer.closed:
            raise ValueError("Cannot invoke RPC on closed channel!")  # grpcio's words

    def _begin(
        self,
        digest: int | None,
        deadline: float | None,
        wait_for_ready: bool,
        tried: Sequence[Endpoint],
        method: str = "",
        retry: bool = False,
        abandoned: Callable[[], bool] | None = None,
    ) -> Attempt:
        """An attempt on a pod, waiting for pods when the call may wait.

        ``retry``: the attempt uses a granted retry, given back if it never starts.
        ``abandoned``: whether the call was cancelled meanwhile (``wake_waiters`` wakes
        the wait to ask); then the wait ends with CANCELLED.
        """
        balancer = self._balancer
        try:
            while True:
                version = self._version
                if abandoned is not None and abandoned():
                    raise cancelled_locally()
                found = attempt_or_wait(
                    balancer, digest, tried, method, retry, wait_for_ready, deadline
                )
                if isinstance(found, Attempt):
                    return found
                with self._changed:
                    if found and self._version == version:
                        self._changed.wait(timeout=found)
        except BaseException:
            if retry:
                balancer.cancel_retry()  # the granted retry never started
            raise

    def _multicallable(self, connection: Connection, key: tuple[Any, ...]) -> Any:
        """Create a pod's multicallable once; grpcio's registration is not thread-safe."""
        return multicallable(connection, key)

    # --- Transport: the I/O the balancer asks for ------------------------------------

    def dial(self, connection: Connection) -> grpc.Channel:
        address = dial_address(connection.endpoint.address)
        if self._credentials is None:
            return grpc.insecure_channel(address, options=self._options)
        return grpc.secure_channel(address, self._credentials, options=self._options)

    def watch(self, connection: Connection) -> None:
        balancer = self._balancer

        def changed(state: grpc.ChannelConnectivity) -> None:
            balancer.connectivity_changed(connection, state)

        channel = connection.channel
        read = connectivity_reader(channel)
        if read is None:  # pragma: no cover - grpcio changed: a polling thread per pod
            connection.watcher = Subscription(channel, changed)
        else:
            # gRPC channels start IDLE and connect only when asked; subscribe(try_to_connect)
            # used to ask, the watch only reads.
            self.connect(connection)
            connection.watcher = MONITOR.watch(read, changed, connection.endpoint.address)
        if self._settings.health_check:  # gRFC A17: one Watch stream on this connection
            service = self._settings.health_check_service_name
            health = HealthWatch(connection, balancer.health_changed, multicallable, service)
            connection.health_watch = health.start()

    def connect(self, connection: Connection) -> None:
        # grpcio's subscribe(try_to_connect=True) leaves a flag that its polling thread
        # acts on later, possibly after the channel closed (a ValueError in that thread);
        # asking the core channel directly has no such after-effect.
        try:
            if not request_connection(connection.channel):  # pragma: no cover - grpcio changed
                connection.channel.subscribe(ignore_state, try_to_connect=True)
                connection.channel.unsubscribe(ignore_state)
        except ValueError:
            pass  # closed meanwhile: nothing to connect

    def close_connection(self, connection: Connection) -> None:
        with self._changed:
            self._to_close.append(connection)
        self.wake()

    def wake(self) -> None:
        with self._changed:
            self._version += 1
            self._dirty = True
            self._changed.notify_all()

    def _backoff(self, delay: float) -> None:
        """Wait out a retry's backoff; a ``close()`` ends the wait at once.

        grpcio's close cancels the calls in flight; a call between attempts is one,
        and finds the channel closed when its next attempt would start.
        """
        end = time.monotonic() + delay
        with self._changed:
            while not self._balancer.closed:
                left = end - time.monotonic()
                if left <= 0:
                    return
                self._changed.wait(timeout=left)  # a change (close() is one), or the time

    def _hold_backoff(self, waiting: Any) -> None:
        """Have ``close()`` call ``waiting.fire()``: a call waiting out a backoff."""
        with self._changed:
            self._backoffs.add(waiting)

    def _drop_backoff(self, waiting: Any) -> None:
        with self._changed:
            self._backoffs.discard(waiting)

    def wake_waiters(self) -> None:
        """Wake the calls waiting for a pod, so that a cancelled one stops waiting."""
        with self._changed:
            self._version += 1
            self._changed.notify_all()

    # --- the background thread ---------------------------------------------------------

    def _new_schedule(self) -> RefreshSchedule:
        s = self._settings
        return RefreshSchedule(
            s.dns_refresh_interval, s.dns_min_refresh_interval, s.dns_respect_ttl
        )

    def _maintain_once(self, schedule: RefreshSchedule) -> float:
        """One pass of the background work; returns the seconds until the next."""
        balancer = self._balancer
        try:
            with self._changed:
                self._dirty = False
            if self._clock() >= schedule.due_at(balancer.resolve_requested):
                balancer.resolve_requested = False
                schedule.started(self._clock())
                resolution = self._resolver.resolve()
                schedule.finished(resolution, self._clock())
                balancer.update(resolution)
            self._close_in_background(self._take_to_close())
            due = min(balancer.maintain(), schedule.due_at(balancer.resolve_requested))
            self._deliver_connectivity()
        except Exception:
            log.exception("grpclb: background maintenance failed; retrying")
            due = self._clock() + 1.0
        return min(max(due - self._clock(), 0.0), 1.0)

    def _take_to_close(self) -> list[Connection]:
        with self._changed:
            taken, self._to_close = self._to_close, []
        return taken

    def _close_in_background(self, connections: list[Connection]) -> list[threading.Thread]:
        """Close pods on one short-lived thread, so no caller waits on grpcio's close().

        With nothing watching through grpcio (see grpclb.sync.connectivity), a pod
        channel's close() no longer waits for a polling thread: 1,000 close in a few
        milliseconds one after the other, so one thread per batch is enough.
        """
        if not connections:
            return []
        closer = threading.Thread(
            target=close_all,
            args=(connections,),
            daemon=True,
            name=f"grpclb close {len(connections)} connections",
        )
        closer.start()
        return [closer]

    def _deliver_connectivity(self) -> None:
        state = self._balancer.aggregate_state()
        with self._changed:
            due = [cb for cb, last in self._subscribers.items() if last is not state]
            for callback in due:
                self._subscribers[callback] = state
        if due:  # on a thread of their own, as grpcio does: a slow one stalls nothing
            threading.Thread(target=_deliver, args=(due, state), daemon=True).start()


def _shut_down(balancer: Balancer) -> None:
    """A dropped channel's end, on a thread of its own: forget the pods, close their channels."""
    with contextlib.suppress(Exception):  # e.g. at interpreter exit
        close_all(balancer.shutdown())


def _maintain_while_alive(
    channel_ref: weakref.ref[Channel], changed: threading.Condition, schedule: RefreshSchedule
) -> None:
    """The background thread: runs while its channel is open and referenced by someone."""
    while True:
        channel = channel_ref()
        if channel is None or channel._balancer.closed:
            return
        wait = channel._maintain_once(schedule)
        with changed:
            idle = not channel._dirty and not channel._balancer.closed
            del channel  # hold no reference while waiting
            if idle:
                changed.wait(timeout=wait)


def _deliver(
    callbacks: list[Callable[[grpc.ChannelConnectivity], None]], state: grpc.ChannelConnectivity
) -> None:
    for callback in callbacks:
        try:
            callback(state)
        except Exception:
            log.exception("grpclb: a connectivity subscriber raised")
