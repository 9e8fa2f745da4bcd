"""The asyncio channel: a ``grpc.aio.Channel`` over the same balancer core.

Only the I/O differs from the sync channel: per-pod ``grpc.aio`` channels
created inside the running loop, one watcher task per connection instead of
grpcio's polling threads, and one maintenance task (DNS with
``dns.asyncresolver``, the balancer's timers) instead of a thread. Background
work starts on first use, so a channel may be created before the loop runs;
it then belongs to the loop that first used it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
import weakref
from collections.abc import Coroutine, Sequence
from typing import Any

import grpc
import grpc.aio
from opentelemetry.metrics import MeterProvider

from grpclb.aio import multicallables
from grpclb.aio.attempts import AioAttempt
from grpclb.aio.health import watch_health
from grpclb.config.settings import Settings
from grpclb.core.admission import attempt_or_wait
from grpclb.core.attempt import Attempt
from grpclb.core.balancer import Balancer, Clock
from grpclb.core.endpoints import READY, Connection, Endpoint
from grpclb.core.retry import CallRun
from grpclb.errors import ConfigError, LocalRpcError
from grpclb.resolver import AsyncResolver, RefreshSchedule
from grpclb.shell import ChannelOptions, ChannelShell, dial_address
from grpclb.stats import ChannelStats, check_min_ready, enough_ready, not_ready_error

log = logging.getLogger("grpclb")


_INTERCEPTOR_KINDS = (
    grpc.aio.UnaryUnaryClientInterceptor,
    grpc.aio.UnaryStreamClientInterceptor,
    grpc.aio.StreamUnaryClientInterceptor,
    grpc.aio.StreamStreamClientInterceptor,
)


def _checked_interceptors(
    interceptors: Sequence[grpc.aio.ClientInterceptor] | None,
) -> list[grpc.aio.ClientInterceptor]:
    """grpc.aio's own rule, applied at creation: pod channels are only created later."""
    try:
        checked = list(interceptors or ())
    except TypeError as exc:
        raise ConfigError(
            f"keyword interceptors={interceptors!r} is invalid: expected a sequence of "
            "grpc.aio client interceptors"
        ) from exc
    for interceptor in checked:
        if not isinstance(interceptor, _INTERCEPTOR_KINDS):
            kinds = " or ".join(f"grpc.aio.{k.__name__}" for k in _INTERCEPTOR_KINDS)
            raise ConfigError(
                f"keyword interceptors: {interceptor!r} is invalid: grpc.aio refuses it; "
                f"each interceptor must be a {kinds}"
            )
    return checked


class Channel(ChannelShell, grpc.aio.Channel):  # type: ignore[misc]
    """A drop-in ``grpc.aio.Channel`` over every pod of a headless service."""

    def __init__(
        self,
        target: str,
        *,
        credentials: grpc.ChannelCredentials | None = None,
        options: ChannelOptions = (),
        interceptors: Sequence[grpc.aio.ClientInterceptor] | None = None,
        settings: Settings | None = None,
        meter_provider: MeterProvider | None = None,
        clock: Clock = time.monotonic,
        rng: random.Random | None = None,
    ) -> None:
        self._interceptors = _checked_interceptors(interceptors)
        self._set_up(target, credentials, options, settings, meter_provider, clock, rng)
        self._resolver = AsyncResolver(
            self._target, self._settings.dns_timeout, self._settings.hosts_file
        )
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[None] | None = None
        self._wakeup: asyncio.Event | None = None
        self._changed: asyncio.Event | None = None
        self._background: set[asyncio.Task[None]] = set()
        # Hedged calls' wake-ups (``_UnaryResponse._hedged``): close() sets them, so a call
        # waiting for its next hedge ends then, as grpc.aio's close() ends calls.
        self._backoffs: weakref.WeakSet[asyncio.Event] = weakref.WeakSet()

    _label = "grpclb.aio.Channel"
    _calls = multicallables
    _attempt_type = AioAttempt

    def _ensure_started(self) -> asyncio.AbstractEventLoop:
        """Start background work in the running loop, on first use."""
        if self._loop is None:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                raise grpc.aio.UsageError(
                    "grpclb.aio.Channel is used from its event loop; no loop is running"
                ) from None
            self._loop = loop
            self._wakeup, self._changed = asyncio.Event(), asyncio.Event()
            self._task = loop.create_task(
                _maintain(self._balancer, self._resolver, self._wakeup, self._clock),
                name=f"grpclb {self._target.text}",
            )
        return self._loop

    # --- grpc.aio.Channel -----------------------------------------------------------

    def get_state(self, try_to_connect: bool = False) -> grpc.ChannelConnectivity:
        """READY while any pod is; pods connect on their own, so try_to_connect adds nothing."""
        if try_to_connect:
            self._ensure_started()
        return self._balancer.aggregate_state()

    async def wait_for_state_change(self, last_observed_state: grpc.ChannelConnectivity) -> None:
        if self._balancer.closed:
            if last_observed_state is grpc.ChannelConnectivity.SHUTDOWN:
                raise grpc.aio.UsageError("the channel is closed: its state will not change")
            return  # it changed: to SHUTDOWN
        self._ensure_started()
        while self._balancer.aggregate_state() is last_observed_state:
            await self._next_change()

    async def channel_ready(self) -> None:
        while (state := self.get_state(try_to_connect=True)) is not READY:
            await self.wait_for_state_change(state)

    async def close(self, grace: float | None = None) -> None:
        """Close every pod's channel; calls in flight get ``grace`` seconds, as grpc.aio's do."""
        if self._balancer.closed:
            return
        connections = self._balancer.shutdown()
        self.wake()  # ends retries' backoffs (``_backoff``)
        for event in list(self._backoffs):
            event.set()  # and wakes hedged calls between hedges
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await asyncio.gather(*(self._close_now(c, grace) for c in connections))
        if self._background:
            await asyncio.gather(*self._background, return_exceptions=True)

    async def __aenter__(self) -> Channel:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close(None)

    # --- grpclb ---------------------------------------------------------------------

    async def wait_for_endpoints(
        self, min_ready: int | None = 1, timeout: float | None = None
    ) -> ChannelStats:
        """Wait until ``min_ready`` pods are READY (None: every pod of the DNS answer).

        ``channel_ready()`` returns when the first pod connects; calls then go to
        that pod alone until the others connect. Returns the stats that satisfied
        the wait; raises ``TimeoutError`` naming every pod's state when ``timeout``
        seconds pass, and ``grpc.aio.UsageError`` if the channel is closed.
        """
        check_min_ready(min_ready)
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            if self._balancer.closed:
                raise grpc.aio.UsageError("grpclb.aio.Channel is closed: no pod will be ready")
            self._ensure_started()
            stats = self.stats()
            if enough_ready(stats, min_ready):
                return stats
            left = 1.0 if deadline is None else deadline - time.monotonic()
            if left <= 0:
                raise not_ready_error(stats, min_ready, timeout or 0.0)
            # Nothing awaited since the check, so no change can slip between it and the wait.
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._next_change(), min(left, 1.0))

    # --- the call path's helpers (used by the asyncio call path) ------------------------------

    def _pick_hedge(
        self, digest: int | None, method: str, run: CallRun, wait_for_ready: bool
    ) -> Attempt | None:
        """A hedged attempt on a pod not tried yet, now, with a budget grant; None if not."""
        balancer = self._balancer
        if balancer.closed or not balancer.reserve_retry():
            return None
        try:
            attempt = balancer.start_call(
                digest, run.tried, method, retry=True, ready_only=wait_for_ready
            )
        except LocalRpcError:
            attempt = None
        if attempt is None:
            balancer.cancel_retry()
        else:
            run.attempts += 1
        return attempt

    async def _begin(
        self,
        digest: int | None,
        deadline: float | None,
        wait_for_ready: bool,
        tried: Sequence[Endpoint],
        method: str = "",
        retry: bool = False,
    ) -> Attempt:
        """An attempt on a pod, waiting for pods when the call may wait."""
        self._ensure_started()
        balancer = self._balancer
        try:
            while True:
                found = attempt_or_wait(
                    balancer, digest, tried, method, retry, wait_for_ready, deadline
                )
                if isinstance(found, Attempt):
                    return found
                if found:
                    with contextlib.suppress(asyncio.TimeoutError):
                        await asyncio.wait_for(self._next_change(), found)
        except BaseException:
            if retry:
                balancer.cancel_retry()  # the granted retry never started
            raise

    async def _backoff(self, delay: float) -> None:
        """Wait out a retry's backoff; a ``close()`` ends the wait at once.

        grpcio's close cancels the calls in flight; a call between attempts is one,
        and finds the channel closed when its next attempt would start.
        """
        loop = self._ensure_started()
        end = loop.time() + delay
        while not self._balancer.closed:
            left = end - loop.time()
            if left <= 0:
                return
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._next_change(), left)  # a change, or the time

    async def _next_change(self) -> None:
        assert self._changed is not None
        await self._changed.wait()

    # --- Transport: the I/O the balancer asks for -----------------------------------------

    def dial(self, connection: Connection) -> grpc.aio.Channel:
        self._ensure_started()  # grpc.aio channels belong to the loop that creates them
        # No interceptors here: they run once around the logical call (grpclb.aio.multicallables),
        # not once per attempt on each pod.
        address = dial_address(connection.endpoint.address)
        if self._credentials is None:
            return grpc.aio.insecure_channel(address, options=self._options)
        return grpc.aio.secure_channel(address, self._credentials, options=self._options)

    def watch(self, connection: Connection) -> None:
        loop = self._ensure_started()
        connection.watcher = loop.create_task(_watch(self._balancer, connection))
        if self._settings.health_check:  # gRFC A17: one Watch stream on this connection
            service = self._settings.health_check_service_name
            report = self._balancer.health_changed
            connection.health_watch = loop.create_task(watch_health(connection, report, service))

    def connect(self, connection: Connection) -> None:
        if connection.channel is not None:
            connection.channel.get_state(try_to_connect=True)

    def close_connection(self, connection: Connection) -> None:
        self._spawn(self._close_now(connection, None))

    def _spawn(self, work: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        """Run ``work`` in the background, kept referenced until done, awaited at close."""
        task = self._ensure_started().create_task(work)
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        return task

    def wake(self) -> None:
        if self._changed is None or self._wakeup is None:
            return
        self._wakeup.set()
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    async def _close_now(self, connection: Connection, grace: float | None) -> None:
        for task in (connection.watcher, connection.health_watch):
            if task is not None:
                task.cancel()
        try:
            await connection.channel.close(grace)
        except Exception:
            log.exception("grpclb: closing %s failed", connection)

    # --- the background task -------------------------------------------------------------

    def __del__(self) -> None:
        """Dropped without close(): stop the background work, as the sync channel does.

        The garbage collector may run this while the loop thread holds the balancer's
        lock (any allocation can trigger it): take no lock here, defer to the loop.
        """
        balancer = getattr(self, "_balancer", None)
        loop = getattr(self, "_loop", None)
        if balancer is None or balancer.closed or loop is None:
            return
        with contextlib.suppress(Exception):  # e.g. the loop is already closed
            loop.call_soon_threadsafe(_shut_down, balancer, self._task)


def _shut_down(balancer: Balancer, task: asyncio.Task[None] | None) -> None:
    """A dropped channel's end, on its loop: forget the pods, stop their tasks."""
    if balancer.closed:
        return
    if task is not None:
        task.cancel()
    for connection in balancer.shutdown():
        for watch in (connection.watcher, connection.health_watch):
            if watch is not None:
                watch.cancel()
        with contextlib.suppress(Exception):
            closing = connection.channel.close(None)
            asyncio.get_running_loop().create_task(closing)


async def _maintain(
    balancer: Balancer,
    resolver: AsyncResolver,
    wakeup: asyncio.Event,
    clock: Clock,
) -> None:
    """The background task: DNS on its schedule and the balancer's timers.

    It holds the balancer, never the channel (the balancer holds its channel
    weakly), so a channel dropped without close() is collected and stops this.
    """
    settings = balancer.settings
    schedule = RefreshSchedule(
        settings.dns_refresh_interval,
        settings.dns_min_refresh_interval,
        settings.dns_respect_ttl,
    )
    while not balancer.closed:
        wakeup.clear()
        try:
            if clock() >= schedule.due_at(balancer.resolve_requested):
                balancer.resolve_requested = False
                schedule.started(clock())
                resolution = await resolver.resolve()
                schedule.finished(resolution, clock())
                balancer.update(resolution)
            due = min(balancer.maintain(), schedule.due_at(balancer.resolve_requested))
        except asyncio.CancelledError:
            raise
        except ReferenceError:
            return  # the channel was collected
        except Exception:
            log.exception("grpclb: background maintenance failed; retrying")
            due = clock() + 1.0
        timeout = min(max(due - clock(), 0.0), 1.0)
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(wakeup.wait(), timeout)


async def _watch(balancer: Balancer, connection: Connection) -> None:
    """Follow one pod channel's connectivity (holding the balancer, not the channel)."""
    channel = connection.channel
    try:
        while not connection.closing:
            # get_state(True) also asks an IDLE channel to connect again.
            state = channel.get_state(try_to_connect=True)
            balancer.connectivity_changed(connection, state)
            await channel.wait_for_state_change(state)
    except (asyncio.CancelledError, ReferenceError):
        pass
    except Exception:
        if not connection.closing:
            log.exception("grpclb: watching %s failed", connection)
