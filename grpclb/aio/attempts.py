"""An asyncio attempt's end: its pod released without taking a lock in grpc.aio's callback.

grpc.aio's ``Call.__del__`` runs done-callbacks synchronously, inside the
garbage collector, on whatever the loop thread was doing, possibly while it
holds the balancer's lock (GRPCIO_NOTES). So an attempt's done-callback never
takes that lock: it defers the release to the loop, and holds its logical
call only weakly, so an abandoned call is freed by reference counting and
cancelled by grpc.aio.
"""

from __future__ import annotations

import asyncio
import logging
import weakref
from typing import Any

from grpclb._grpcio import aio_finished_status
from grpclb.core.attempt import Attempt

log = logging.getLogger("grpclb")


class AttemptEnded:
    """An attempt's done-callback: defer its release to the loop; never take a lock, never raise.

    It holds the logical call weakly (no reference cycle: an abandoned call is
    freed by reference counting and cancelled by grpc.aio).
    """

    __slots__ = ("attempt", "loop", "owner")

    def __init__(self, owner: Any, attempt: Attempt, loop: asyncio.AbstractEventLoop) -> None:
        self.owner = weakref.ref(owner)
        self.attempt, self.loop = attempt, loop

    def __call__(self, call: Any) -> None:
        try:
            owner = self.owner()
            if owner is not None and owner._awaiting is call:
                # The task awaiting this very attempt releases and settles the call itself
                # when it resumes, one loop turn sooner and without scheduling anything
                # (``_UnaryResponse``); a cancel settles it at once (``_Call.cancel``).
                return
            attempt = self.attempt
            if not attempt.released:
                code = aio_finished_status(call)
                if code is None and not call.cancelled():
                    # Interceptors hide grpcio's call: ask it the slow way, on the loop.
                    self.loop.call_soon(_spawn_release, attempt, call)
                else:
                    self.loop.call_soon(attempt.release, code)
            if owner is not None:
                owner._attempt_done(call)
        except Exception:  # pragma: no cover - defensive
            log.exception("grpclb: ending an attempt failed")


def _spawn_release(attempt: Attempt, call: Any) -> None:
    async def release() -> None:
        try:
            code = await call.code()
        except BaseException:
            code = None
        attempt.release(code)

    asyncio.get_running_loop().create_task(release())
