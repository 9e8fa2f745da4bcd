"""One thread for the whole process learns the connectivity of every sync pod channel.

grpcio's ``subscribe`` runs one polling thread per subscribed channel, each
waking about five times a second: at 1,000 pods that is 1,000 threads and about
0.35 CPU-seconds per second of an idle client. Reading a channel's state
(``grpclb._grpcio.connectivity_reader``) costs about half a microsecond and
does no I/O, so a single thread here reads every watched channel on a cadence
and hands each change to its callback, as ``subscribe`` would.

The cadence follows the sweep's own CPU cost: a sweep runs every
``min_interval`` (20 ms, so a pod that goes away leaves rotation within a few
tens of milliseconds) unless reading every channel costs more than ``duty`` of
one core at that pace; then sweeps space out, but never beyond
``max_interval``, grpcio's own polling period. New watches are read at once,
so a new pod's first state arrives without waiting for the next sweep.

Closing is safe at any moment: nothing is left pending in grpcio (no watch
with a deadline for ``close()`` to wait on, no flag for a thread to act on
after the close), a reader of a closed channel raises ``ValueError`` and its
watch is dropped, and ``unwatch`` guarantees no callback starts afterwards
unless it was already being delivered.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable

import grpc

log = logging.getLogger("grpclb")
Reader = Callable[[], grpc.ChannelConnectivity]
Callback = Callable[[grpc.ChannelConnectivity], None]

MIN_INTERVAL_S = 0.02
MAX_INTERVAL_S = 0.2  # grpcio's polling thread wakes this often when nothing changes
DUTY = 0.02  # at most 2 % of one core spent reading states, below MAX_INTERVAL_S
IDLE_EXIT_S = 5.0  # the thread ends after this long with nothing to watch


class Watch:
    """One watched channel: how to read it, whom to tell, what it was last seen as."""

    __slots__ = ("active", "callback", "label", "last", "read")

    def __init__(self, read: Reader, callback: Callback, label: str) -> None:
        self.read = read
        self.callback = callback
        self.label = label
        self.last: grpc.ChannelConnectivity | None = None  # None: the first state is owed
        self.active = True

    def __repr__(self) -> str:
        last = self.last.name if self.last is not None else "unread"
        return f"<Watch {self.label} {last}{'' if self.active else ' stopped'}>"


def next_interval(sweep_cpu: float, min_interval: float, max_interval: float, duty: float) -> float:
    """Seconds between sweeps: as often as ``min_interval`` while a sweep stays within ``duty``."""
    return min(max(sweep_cpu / duty, min_interval), max_interval)


class ConnectivityMonitor:
    """Reads watched channels' states on one daemon thread, started on the first watch."""

    def __init__(
        self,
        *,
        min_interval: float = MIN_INTERVAL_S,
        max_interval: float = MAX_INTERVAL_S,
        duty: float = DUTY,
        cpu_clock: Callable[[], float] = time.thread_time,
        threaded: bool = True,
    ) -> None:
        self._min_interval, self._max_interval, self._duty = min_interval, max_interval, duty
        self._cpu_clock = cpu_clock
        self._threaded = threaded  # False: only sweep() reads (tests drive it by hand)
        self._cond = threading.Condition()
        self._watches: dict[Watch, None] = {}  # insertion-ordered set
        self._fresh: list[Watch] = []  # watches whose first state is still owed
        self._thread: threading.Thread | None = None
        self._sweep_cpu = 0.0  # smoothed CPU seconds of one full sweep
        self.sweeps = 0

    def __repr__(self) -> str:
        return (
            f"<ConnectivityMonitor [{len(self._watches)} watched, every "
            f"{self.interval * 1000:.0f} ms, {self.sweeps} sweeps]>"
        )

    @property
    def interval(self) -> float:
        """The current time between full sweeps, in seconds."""
        return next_interval(self._sweep_cpu, self._min_interval, self._max_interval, self._duty)

    def __len__(self) -> int:
        return len(self._watches)

    def watch(self, read: Reader, callback: Callback, label: str = "") -> Watch:
        """Start telling ``callback`` of the channel's states, the current one first."""
        watch = Watch(read, callback, label)
        with self._cond:
            self._watches[watch] = None
            self._fresh.append(watch)
            self._ensure_thread_locked()
            self._cond.notify_all()
        return watch

    def unwatch(self, watch: Watch) -> None:
        """Stop watching; no callback starts after this returns (one already running may end)."""
        with self._cond:
            watch.active = False
            self._watches.pop(watch, None)

    def reset_after_fork(self) -> None:
        """In a child process: the parent's channels and thread are gone; forget them."""
        self._cond = threading.Condition()
        self._watches, self._fresh, self._thread = {}, [], None

    # --- sweeping ------------------------------------------------------------------

    def sweep(self, watches: list[Watch] | None = None) -> int:
        """Read the given watches (default: all) and deliver changes; return how many."""
        if watches is None:
            with self._cond:
                watches = list(self._watches)
        changed: list[tuple[Watch, grpc.ChannelConnectivity]] = []
        gone: list[Watch] = []
        for watch in watches:
            if not watch.active:
                continue
            try:
                state = watch.read()
            except ValueError:  # closed by its owner without unwatch: nothing left to watch
                gone.append(watch)
                continue
            except Exception:
                log.exception("grpclb: reading %r failed", watch)
                continue
            if state is not watch.last:
                watch.last = state
                changed.append((watch, state))
        for watch in gone:
            self.unwatch(watch)
        for watch, state in changed:
            if watch.active and watch.last is state:
                try:
                    watch.callback(state)
                except Exception:  # one pod's failure must not stop the others' news
                    log.exception("grpclb: a connectivity callback raised for %r", watch)
        return len(changed)

    def _ensure_thread_locked(self) -> None:
        if not self._threaded:
            return
        if self._thread is not None and self._thread.is_alive():
            return
        self._thread = threading.Thread(target=self._run, name="grpclb connectivity", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        """The thread: first states at once, then a full sweep every ``interval``."""
        me = threading.current_thread()
        next_sweep = time.monotonic()
        idle_since: float | None = None
        while True:
            with self._cond:
                if self._thread is not me:
                    return  # replaced (after a fork)
                while not self._fresh:
                    now = time.monotonic()
                    if not self._watches:
                        idle_since = now if idle_since is None else idle_since
                        if now - idle_since >= IDLE_EXIT_S:
                            self._thread = None
                            return
                        self._cond.wait(timeout=IDLE_EXIT_S)
                        continue
                    idle_since = None
                    if now >= next_sweep:
                        break
                    self._cond.wait(timeout=next_sweep - now)
                fresh, self._fresh = self._fresh, []
            if fresh:
                self.sweep(fresh)
                continue
            started = self._cpu_clock()
            self.sweep()
            cost = self._cpu_clock() - started
            self.sweeps += 1
            # Smoothed, so one sweep slowed by a busy moment does not stretch the cadence.
            self._sweep_cpu = cost if self.sweeps == 1 else 0.8 * self._sweep_cpu + 0.2 * cost
            next_sweep = time.monotonic() + self.interval


MONITOR = ConnectivityMonitor()
"""The process's monitor, shared by every sync ``grpclb.Channel``."""

os.register_at_fork(after_in_child=MONITOR.reset_after_fork)
