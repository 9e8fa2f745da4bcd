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
one core at that pace (its wake-up included); then sweeps space out, but never
beyond ``max_interval``, grpcio's own polling period. The thread ends when
nothing is watched and starts again with the next watch.

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
        self._lock = threading.Lock()
        self._watches: dict[Watch, None] = {}  # insertion-ordered set
        self._thread: threading.Thread | None = None
        self._sweep_cpu = 0.0  # smoothed CPU seconds of one turn of the thread
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
        with self._lock:
            self._watches[watch] = None
            self._ensure_thread_locked()
        return watch

    def unwatch(self, watch: Watch) -> None:
        """Stop watching; no callback starts after this returns (one already running may end)."""
        with self._lock:
            watch.active = False
            self._watches.pop(watch, None)

    def reset_after_fork(self) -> None:
        """In a child process: the parent's channels and thread are gone; forget them."""
        self._lock = threading.Lock()
        self._watches, self._thread = {}, None

    # --- sweeping ------------------------------------------------------------------

    def sweep(self, watches: list[Watch] | None = None) -> int:
        """Read the given watches (default: all) and deliver changes; return how many.

        Only the monitor's thread sweeps (or a test, with ``threaded=False``).
        """
        if watches is None:
            with self._lock:
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
        """The thread: a sweep every ``interval`` while anything is watched.

        A plain sleep, not a condition wait: each wake-up is the thread's main cost
        when few pods are watched, and a sleep's is about half a condition's. A new
        watch is read at the next sweep, at most ``min_interval`` away.
        """
        me = threading.current_thread()
        started = self._cpu_clock()
        while True:
            with self._lock:
                if self._thread is not me:
                    return  # replaced (after a fork)
                if not self._watches:
                    self._thread = None  # the next watch starts a new thread
                    return
            self.sweep()
            now = self._cpu_clock()
            cost, started = now - started, now  # the whole turn: sweep and wake-up
            self.sweeps += 1
            # Smoothed, so one sweep slowed by a busy moment does not stretch the cadence.
            self._sweep_cpu = cost if self.sweeps == 1 else 0.8 * self._sweep_cpu + 0.2 * cost
            time.sleep(self.interval)


MONITOR = ConnectivityMonitor()
"""The process's monitor, shared by every sync ``grpclb.Channel``."""

os.register_at_fork(after_in_child=MONITOR.reset_after_fork)
