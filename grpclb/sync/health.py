"""The sync flavour's health Watch: one thread per pod connection, only with health_check on.

grpcio's sync API delivers a response stream only through a blocking iterator
(there is no per-message callback), so each connection's
``grpc.health.v1.Health/Watch`` stream is read on a thread of its own. The
thread sleeps in grpcio's wait between answers and costs no CPU; its cost is
one thread (a stack's memory) per pod connection, two while a connection is
being replaced. With ``health_check`` off, as by default, none is started.
The answers' meaning and the retry pace are the core's
(``grpclb.core.health``).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

import grpc

from grpclb.core.endpoints import Connection
from grpclb.core.health import (
    UNIMPLEMENTED,
    WATCH_METHOD,
    WatchBackoff,
    decode_status,
    encode_request,
    state_after_error,
    state_of_status,
)

log = logging.getLogger("grpclb")
# (kind, method, serializer, deserializer, registered), as the call path keys multicallables.
WATCH_KEY = ("unary_stream", WATCH_METHOD, None, None, False)


class HealthWatch:
    """Reads one connection's Watch stream on a daemon thread until stopped."""

    def __init__(
        self,
        connection: Connection,
        report: Callable[[Connection, str], None],
        multicallable: Callable[[Connection, tuple[Any, ...]], Any],
        service: str,
    ) -> None:
        self._connection = connection
        self._report = report
        self._multicallable = multicallable
        self._request = encode_request(service)
        self._stopped = threading.Event()
        self._lock = threading.Lock()
        self._call: Any = None
        self._thread = threading.Thread(
            target=self._run, name=f"grpclb health {connection.endpoint.address}", daemon=True
        )

    def start(self) -> HealthWatch:
        self._thread.start()
        return self

    def stop(self) -> None:
        """Cancel the stream; A17: "There is no need to wait for the final status"."""
        with self._lock:
            self._stopped.set()
            call, self._call = self._call, None
        if call is not None:
            call.cancel()

    def _run(self) -> None:
        try:
            self._watch_until_stopped()
        except Exception:  # a thread that dies silently would freeze the pod's health
            if not self._stopped.is_set() and not self._connection.closing:
                log.exception("grpclb: the health watch of %s failed", self._connection)

    def _watch_until_stopped(self) -> None:
        connection, backoff = self._connection, WatchBackoff()
        while True:
            delay = backoff.next_delay()
            if delay and self._stopped.wait(delay):
                return
            try:
                watch = self._multicallable(connection, WATCH_KEY)
                with self._lock:
                    if self._stopped.is_set():
                        return
                    # wait_for_ready: the stream waits for the connection, never fails on it.
                    call = self._call = watch(self._request, wait_for_ready=True)
                for message in call:
                    backoff.answered()
                    self._report(connection, state_of_status(decode_status(message)))
                code = call.code()  # the server ended the stream: watch again
            except grpc.RpcError as error:
                code = error.code() if hasattr(error, "code") else None
            except ValueError:
                return  # the channel closed under us
            if self._stopped.is_set() or connection.closing:
                return
            state = state_after_error(code)
            self._report(connection, state)
            if state == UNIMPLEMENTED:
                return  # A17: no health service, so no retry
