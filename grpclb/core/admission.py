"""Whether a call may start now, must wait for pods, or fails: one rule for sync and aio.

A call that finds no pod waits only while waiting can help: before the first
DNS answer (gRPC queues calls until its resolver answers), or when the call
asked for ``wait_for_ready``. Otherwise it fails at once with UNAVAILABLE and
a detail naming the target and why the set is empty.
"""

from __future__ import annotations

import time
from collections.abc import Collection, Sequence

import grpc

from grpclb.core.attempt import Attempt
from grpclb.core.balancer import Balancer
from grpclb.core.endpoints import Endpoint
from grpclb.core.hashing import hash_key
from grpclb.errors import LocalRpcError

Metadata = Sequence[tuple[str, str | bytes]] | None

# How long one wait for pods lasts before the call looks again, at most.
WAIT_SLICE = 1.0


def request_hash(metadata: Metadata, key: str | None) -> int | None:
    """The hash of the call's hash-key value, or None when there is no such key."""
    if key is not None and metadata:
        for name, value in metadata:
            if name == key:
                return hash_key(value)
    return None


def wait_for_pods(
    balancer: Balancer, wait_for_ready: bool, deadline: float | None, now: float
) -> float:
    """Seconds to wait before looking for a pod again; raises when the call must fail now."""
    if balancer.closed:
        raise ValueError("Cannot invoke RPC on closed channel!")
    answered, has_pods = balancer.admission_view(ready_only=wait_for_ready)
    if has_pods:
        return 0.0  # pods arrived after this call looked: look again now
    if not (wait_for_ready or not answered):
        why = balancer.last_resolution_error or "no endpoints"
        raise LocalRpcError(
            grpc.StatusCode.UNAVAILABLE,
            f"grpclb: no endpoints found for {balancer.target.text}: {why}",
        )
    if deadline is None:
        return WAIT_SLICE
    remaining = deadline - now
    if remaining <= 0:
        raise LocalRpcError(
            grpc.StatusCode.DEADLINE_EXCEEDED,
            f"grpclb: deadline exceeded while waiting for endpoints of {balancer.target.text} "
            f"({balancer.last_resolution_error or 'none yet'})",
        )
    return min(remaining, WAIT_SLICE)


def attempt_or_wait(
    balancer: Balancer,
    digest: int | None,
    tried: Collection[Endpoint],
    method: str,
    retry: bool,
    wait_for_ready: bool,
    deadline: float | None,
) -> Attempt | float:
    """An attempt on a pod now, or the seconds to wait before looking again.

    Raises when the call must fail now: ``LocalRpcError`` (no pods, the deadline,
    the circuit breaker), or CANCELLED when the channel closed while the call
    waited, as grpcio reports such a call. Each flavour only waits its own way.
    """
    attempt = balancer.start_call(digest, tried, method, retry, wait_for_ready)
    if attempt is not None:
        return attempt
    try:
        return wait_for_pods(balancer, wait_for_ready, deadline, time.monotonic())
    except ValueError:  # closed while this call waited: cancelled, as grpcio does
        raise LocalRpcError(grpc.StatusCode.CANCELLED, "Channel closed!") from None
