"""An attempt's hold on a pod: what one try of a call owns until it ends.

A pick returns an ``Attempt``; it holds the attempt's in-flight counts (on
the connection, the pod and the channel), its retry-budget grant, and what
telemetry needs (method, start time). ``release(code)`` gives all of it back
and hands the outcome to the outlier detector, exactly once however the
attempt ends: a second release is a no-op, so racing ends (a done-callback
and the awaiting task, a cancel and a deadline) cannot double-count. Anchors:
grpc-go's ``PickResult.Done`` and tower's in-flight handle.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import grpc

if TYPE_CHECKING:
    from grpclb.core.balancer import Balancer
    from grpclb.core.endpoints import Connection, Endpoint


class Attempt:
    """One attempt of a call on one pod's connection, released once."""

    __slots__ = ("balancer", "connection", "endpoint", "method", "released", "retry", "started")

    def __init__(
        self,
        balancer: Balancer,
        connection: Connection,
        retry: bool,
        method: str,
        started: float,
    ) -> None:
        self.balancer = balancer
        self.connection = connection
        self.endpoint: Endpoint = connection.endpoint
        self.retry = retry  # holds a retry-budget grant (a retry or a hedge)
        self.method = method
        self.started = started  # time.perf_counter() at the pick, when telemetry is on
        self.released = False

    def release(self, code: grpc.StatusCode | None) -> None:
        """Give back what the attempt holds; ``None``: no verdict on the pod (a cancel).

        Idempotent. Takes the balancer's lock: never call it from a context that
        may already hold that lock (grpc.aio done-callbacks, finalizers); defer.
        """
        if not self.released:
            self.balancer.release(self, code)

    def __repr__(self) -> str:
        state = "released" if self.released else "holding"
        kind = "retry" if self.retry else "first"
        return f"<Attempt {self.endpoint.address} {self.method} {kind} {state}>"
