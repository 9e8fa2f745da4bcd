"""Active health checking, gRFC A17: what a pod's health answers mean, and the retry pace.

Each pod connection carries one ``grpc.health.v1.Health/Watch`` stream (the
shells do that I/O); this module is the part both shells share: the tiny
protobuf codec (so the runtime needs no protobuf package), the mapping of
answers and stream errors onto a health state, the jittered backoff between
broken streams, and the balancer's reaction to a change (``EndpointHealth``, a
mixin of ``Balancer``, like ``ConnectionLifecycle``).

States, per connection:

- ``disabled``: health checking is off;
- ``pending``: no answer yet, or the stream broke and is being retried. As
  A17's CONNECTING: the pod is not picked while others are READY and answered;
- ``serving``: in rotation;
- ``not_serving``, ``service_unknown``, ``unknown``: out of rotation, like an
  ejected pod (calls already on it finish; panic mode still counts it);
- ``unimplemented``: the pod has no health service; it stays in rotation.
"""

from __future__ import annotations

import logging
import random
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING

import grpc

from grpclb.core.endpoints import Connection, Endpoint

if TYPE_CHECKING:
    from grpclb.config.settings import Settings
    from grpclb.config.target import Target
    from grpclb.telemetry import Telemetry

log = logging.getLogger("grpclb")

WATCH_METHOD = "/grpc.health.v1.Health/Watch"
CHECK_METHOD = "/grpc.health.v1.Health/Check"

DISABLED = "disabled"
PENDING = "pending"
SERVING = "serving"
NOT_SERVING = "not_serving"
SERVICE_UNKNOWN = "service_unknown"
UNKNOWN = "unknown"
UNIMPLEMENTED = "unimplemented"
HEALTH_STATES = (DISABLED, PENDING, SERVING, NOT_SERVING, SERVICE_UNKNOWN, UNKNOWN, UNIMPLEMENTED)
# "if the health check response indicates that the backend is healthy, the subchannel
# will transition to state READY; otherwise, it will transition to TRANSIENT_FAILURE" - A17
UNHEALTHY = frozenset({NOT_SERVING, SERVICE_UNKNOWN, UNKNOWN})

# grpc.health.v1.HealthCheckResponse.ServingStatus
STATUS_NAMES = {0: "UNKNOWN", 1: "SERVING", 2: "NOT_SERVING", 3: "SERVICE_UNKNOWN"}
_STATES = {0: UNKNOWN, 1: SERVING, 2: NOT_SERVING, 3: SERVICE_UNKNOWN}

# A17 retries with the connection backoff of gRPC (connection-backoff.md): 1 s, x1.6, ±20 %,
# at most 120 s.
BACKOFF_BASE_S = 1.0
BACKOFF_MULTIPLIER = 1.6
BACKOFF_JITTER = 0.2
BACKOFF_MAX_S = 120.0


def is_unhealthy(state: str) -> bool:
    return state in UNHEALTHY


# --- the messages, by hand: HealthCheckRequest{string service = 1} and
# --- HealthCheckResponse{ServingStatus status = 1}


def encode_request(service: str) -> bytes:
    """HealthCheckRequest{service}: field 1, length-delimited; "" is the empty message."""
    data = service.encode()
    return b"\x0a" + _varint(len(data)) + data if data else b""


def decode_status(data: bytes) -> int:
    """HealthCheckResponse.status (field 1, a varint); other fields are skipped."""
    status, i = 0, 0
    while i < len(data):
        key, i = _read_varint(data, i)
        if key == 0x08:
            status, i = _read_varint(data, i)
        elif key & 7 == 0:
            i = _read_varint(data, i)[1]
        elif key & 7 == 2:
            length, i = _read_varint(data, i)
            i += length
        else:
            i += {1: 8, 5: 4}.get(key & 7, len(data))
    return status


def _varint(value: int) -> bytes:
    out = bytearray()
    while value > 0x7F:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    return bytes([*out, value])


def _read_varint(data: bytes, i: int) -> tuple[int, int]:
    value = shift = 0
    while i < len(data):
        byte = data[i]
        i += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            break
    return value, i


# --- what an answer or an error means ---


def state_of_status(status: int) -> str:
    """The health state a Watch answer puts the connection in."""
    return _STATES.get(status, UNKNOWN)


def state_after_error(code: grpc.StatusCode | None) -> str:
    """The state after a Watch stream ended with ``code``.

    "If the Watch() call fails with status UNIMPLEMENTED, the client will act as
    if health checking is disabled" - A17: no retry, the pod stays in rotation.
    Any other end is retried; until the next answer the pod is pending.
    """
    return UNIMPLEMENTED if code is grpc.StatusCode.UNIMPLEMENTED else PENDING


class WatchBackoff:
    """Seconds to wait before the next Watch attempt of one connection.

    "When the client receives a message from the server on a given call, the
    backoff state is reset, so the next attempt will occur immediately" - A17.
    """

    __slots__ = ("_attempts", "_random")

    def __init__(self, rng: random.Random | None = None) -> None:
        self._random = (rng or random.Random()).random
        self._attempts = 0

    def answered(self) -> None:
        """A message arrived on the current stream: the next retry starts at once."""
        self._attempts = 0

    def next_delay(self) -> float:
        """The wait before the next attempt, growing until a message resets it."""
        attempts, self._attempts = self._attempts, self._attempts + 1
        if attempts == 0:
            return 0.0
        delay = min(BACKOFF_BASE_S * BACKOFF_MULTIPLIER ** (attempts - 1), BACKOFF_MAX_S)
        return delay * (1.0 + BACKOFF_JITTER * (2.0 * self._random() - 1.0))


# --- the balancer's side ---


class EndpointHealth:
    """The balancer's reaction to a health change (a mixin of ``Balancer``)."""

    target: Target
    settings: Settings
    telemetry: Telemetry
    closed: bool
    _endpoints: dict[str, Endpoint]
    _clock: Callable[[], float]
    _lock: threading.Lock

    # Provided by Balancer:
    _rebuild_locked: Callable[[], None]
    _run: Callable[[list[Callable[[], None]]], None]
    _start_ramp_locked: Callable[[Endpoint], None]

    def initial_health(self) -> str:
        """A new connection's state: pending until its first answer when checking is on."""
        return PENDING if self.settings.health_check else DISABLED

    def health_changed(self, connection: Connection, state: str) -> None:
        """A Watch stream answered or ended (called from the flavour's health watcher)."""
        with self._lock:
            if connection.closing or self.closed or connection.health == state:
                return
            previous, connection.health = connection.health, state
            endpoint = connection.endpoint
            if connection is not endpoint.connection:
                return  # a replacement: its health counts once it takes over
            self._report_locked(endpoint, previous, state)
            if state == SERVING and previous in UNHEALTHY:
                self._start_ramp_locked(endpoint)  # back from unhealthy: ramp up again
            self._rebuild_locked()
        self._run([])

    def _report_locked(self, endpoint: Endpoint, previous: str, state: str) -> None:
        self.telemetry.health_changed(endpoint.address, len(self._endpoints), state)
        name = self.target.text
        if state == UNIMPLEMENTED:
            if not endpoint.health_warned:
                endpoint.health_warned = True
                log.warning(
                    "grpclb %s: pod %s has no grpc.health.v1 service (UNIMPLEMENTED); "
                    "it stays in rotation unchecked",
                    name,
                    endpoint.address,
                )
        elif state in UNHEALTHY:
            log.warning("grpclb %s: pod %s is %s; out of rotation", name, endpoint.address, state)
        elif state == SERVING and previous in UNHEALTHY:
            log.info("grpclb %s: pod %s is serving again", name, endpoint.address)
