"""An asyncio attempt: its hold on a pod, and its own done-callback.

grpc.aio's ``Call.__del__`` runs done-callbacks synchronously, inside the
garbage collector, on whatever the loop thread was doing, possibly while it
holds the balancer's lock (GRPCIO_NOTES). So an attempt's done-callback never
takes that lock: it defers the release to the loop.

The attempt is its own done-callback: on a busy client, every object an
attempt keeps while it runs adds to the young-generation collections
(measured: the callback's four objects raised them by a third against plain
grpc.aio), so the hot path (unary-unary) adds none.
"""

from __future__ import annotations

import asyncio
import logging
import weakref
from typing import Any

from grpclb._grpcio import aio_finished_status, when_unary_call_ends
from grpclb.core.attempt import Attempt

log = logging.getLogger("grpclb")


class AioAttempt(Attempt):
    """An attempt on a grpc.aio call, called when the call ends; never takes a lock or raises."""

    __slots__ = ("call", "loop", "owner")

    def watch(self, owner: Any, call: Any, unary: bool) -> None:
        """Be called when ``call``, this attempt of the logical call ``owner``, ends.

        A unary-unary call is held until it ends by grpc.aio's own invocation
        task, so holding it and ``owner`` here makes no cycle that outlives the
        call (both are let go when it ends). A stream is held only by its
        caller, so ``owner`` is held weakly: an abandoned stream is freed by
        reference counting, and cancelled by grpc.aio.
        """
        if unary:
            self.owner, self.call = owner, call  # (the loop is the owner's)
            when_unary_call_ends(call, self)
        else:
            self.owner, self.call, self.loop = weakref.ref(owner), None, owner._loop
            call.add_done_callback(self)

    def __call__(self, call: Any = None) -> None:
        owner = self.owner
        try:
            if call is None:  # the unary path: let go of what it held
                call = self.call
                self.owner = self.call = None
                loop = owner._loop
            else:
                loop = self.loop
                if owner is not None:
                    owner = owner()
            if owner is not None and owner._awaiting is call:
                # The task awaiting this very attempt releases and settles the call itself
                # when it resumes, one loop turn sooner and without scheduling anything
                # (``_UnaryResponse``); a cancel settles it at once (``_Call.cancel``).
                return
            if not self.released:
                code = aio_finished_status(call)
                if code is None and not call.cancelled():
                    # Interceptors hide grpcio's call: ask it the slow way, on the loop.
                    loop.call_soon(_spawn_release, self, call)
                else:
                    loop.call_soon(self.release, code)
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
