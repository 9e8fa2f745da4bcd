"""Retry and hedging decisions for one logical call: values in, decisions out, no I/O.

Each method's calls follow one ``CallPolicy``, built once per multicallable:
the service config's ``retryPolicy`` or ``hedgingPolicy`` for that method
(gRFC A6), else grpclb's channel-wide ``retries``. A ``CallRun`` holds one
call's progress and answers the drivers' two questions, "retry after how
long, or fail?" and "hedge now?"; the drivers (blocking, future, stream,
asyncio) only execute the answers, as tenacity's drivers execute its
``iter()``. The retry budget (Envoy's) is the balancer's and is asked by the
drivers when a decision says "retry" or "hedge".

tenacity supplies the backoff: ``wait_exponential`` is A6's ceiling
``min(initialBackoff * multiplier**(n-1), maxBackoff)`` and the full jitter
draws between 0 and it (A6: "random(0, min(...))"), from the injected random
source so tests control it.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import grpc
import tenacity

if TYPE_CHECKING:
    from grpclb.config.settings import Settings
    from grpclb.core.endpoints import Endpoint
    from grpclb.core.throttle import RetryThrottle

PUSHBACK_KEY = "grpc-retry-pushback-ms"
# The failed attempt's trailing metadata, read only when a decision needs it.
Trailing = Callable[[], Sequence[tuple[str, Any]] | None]
_STOP = -1.0  # a pushback telling the client not to retry
# A margin for telling an attempt's own deadline from a status: grpcio keeps deadlines to
# the millisecond. (Measured, its deadline always fired after ours: it is computed later.)
_DEADLINE_SLACK = 0.005
PREVIOUS_ATTEMPTS_KEY = "grpc-previous-rpc-attempts"


def _reached(deadline: float | None, now: float) -> bool:
    """Whether ``deadline`` has come, as grpcio's own deadline for it would say."""
    return deadline is not None and now >= deadline - _DEADLINE_SLACK


class Replayed(Protocol):
    """A request stream kept for retries (``core.request_buffer``)."""

    @property
    def committed(self) -> bool: ...

    def commit(self) -> None: ...


class _FullJitter(tenacity.wait.wait_base):
    """A6's backoff: uniform between 0 and tenacity's exponential ceiling, injected randomness."""

    def __init__(self, initial: float, maximum: float, multiplier: float, rng: random.Random):
        self._ceiling = tenacity.wait_exponential(
            multiplier=initial, max=maximum, exp_base=multiplier
        )
        self._rng = rng

    def __call__(self, retry_state: tenacity.RetryCallState) -> float:
        return self._rng.uniform(0.0, float(self._ceiling(retry_state)))


@dataclass(frozen=True)
class CallPolicy:
    """What a method's calls do on failure, and the service config's per-method limits."""

    max_attempts: int  # attempts in all, the first included; 1: none after it
    codes: frozenset[grpc.StatusCode]  # retryable (retries) or non-fatal (hedging)
    hedging_delay: float | None  # None: retries; otherwise hedges after this delay
    retrying: tenacity.Retrying | None  # holds the backoff: tenacity's wait for its attempt n
    timeout: float | None = None  # the service config's; a call's own deadline may be shorter
    wait_for_ready: bool | None = None
    throttle: RetryThrottle | None = None  # A6 retryThrottling, shared by the channel
    origin: str = "grpclb retries"
    # retryPolicy.perAttemptRecvTimeout: each attempt of a unary-response call ends after
    # this long, and is retried whatever its status (``CallRun.attempt_timeout``).
    attempt_timeout: float | None = None

    @property
    def hedging(self) -> bool:
        return self.hedging_delay is not None

    def call_limits(
        self, timeout: float | None, wait_for_ready: bool | None
    ) -> tuple[float | None, bool]:
        """(timeout, wait_for_ready) of one call: its own values, then the method config's.

        "the effective deadline is the shorter of this and the call's own"; a call's
        own ``wait_for_ready`` wins over ``waitForReady``. A timeout, not a deadline:
        a call that starts at once passes it to grpcio as it is, with no clock read.
        """
        limit = self.timeout
        if limit is not None and (timeout is None or limit < timeout):
            timeout = limit
        if wait_for_ready is None:
            return timeout, bool(self.wait_for_ready)
        return timeout, bool(wait_for_ready)


NO_RETRIES = CallPolicy(1, frozenset(), None, None, origin="no retries")


def _backoff(initial: float, maximum: float, multiplier: float, rng: random.Random) -> Any:
    return tenacity.Retrying(wait=_FullJitter(initial, maximum, multiplier, rng))


def channel_policy(settings: Settings, rng: random.Random) -> CallPolicy:
    """grpclb's channel-wide retries (Envoy's retry_on, num_retries and backoff)."""
    if settings.retries == 0:
        return NO_RETRIES
    wait = _backoff(settings.retry_backoff_base, settings.retry_backoff_max, 2.0, rng)
    return CallPolicy(settings.retries + 1, settings.retry_codes, None, wait)


def method_policy(
    settings: Settings,
    method: str,
    request_stream: bool,
    rng: random.Random,
    throttle: RetryThrottle | None = None,
) -> CallPolicy:
    """The policy of ``method``'s calls: its service config entry, else the channel's retries.

    A request stream is retried from its buffer (``core.request_buffer``) but
    never hedged: under a ``hedgingPolicy`` its calls make one attempt, and
    their timeout and waitForReady still apply.
    """
    config = settings.service_config
    entry = config.method_config(method) if config is not None else None
    base = channel_policy(settings, rng)
    if entry is None:
        return base
    limits: dict[str, Any] = {"timeout": entry.timeout, "wait_for_ready": entry.wait_for_ready}
    if entry.retries_off:
        return CallPolicy(1, frozenset(), None, None, **limits, origin="no retries")
    if entry.retry_policy is not None:
        p = entry.retry_policy
        wait = _backoff(p.initial_backoff, p.max_backoff, p.backoff_multiplier, rng)
        return CallPolicy(
            p.max_attempts, p.retryable_status_codes, None, wait, **limits,
            throttle=throttle, origin="service config retryPolicy",
            attempt_timeout=p.per_attempt_recv_timeout,
        )  # fmt: skip
    if entry.hedging_policy is not None:
        if request_stream:
            return CallPolicy(
                1,
                frozenset(),
                None,
                None,
                **limits,
                origin="hedgingPolicy, not for request streams",
            )
        h = entry.hedging_policy
        return CallPolicy(
            h.max_attempts, h.non_fatal_status_codes, h.hedging_delay, None, **limits,
            throttle=throttle, origin="service config hedgingPolicy",
        )  # fmt: skip
    return CallPolicy(
        base.max_attempts, base.codes, None, base.retrying, **limits, origin=base.origin
    )


def pushback(trailing_metadata: Sequence[tuple[str, Any]] | None) -> float | None:
    """The server's ``grpc-retry-pushback-ms`` in seconds; ``_STOP`` for "do not retry".

    A6: "If the value ... is not a non-negative integer, the client will not retry."
    """
    for key, value in trailing_metadata or ():
        if key == PUSHBACK_KEY:
            text = value.decode("ascii", "replace") if isinstance(value, bytes) else str(value)
            if text.isascii() and text.isdigit():
                return int(text) / 1000.0
            return _STOP
    return None


def with_previous_attempts(metadata: Any, previous: int) -> Any:
    """An attempt's metadata after ``previous`` attempts of the same call.

    A6 ("Exposed Retry Metadata"): retries and hedges carry
    ``grpc-previous-rpc-attempts``, the number of attempts before this one, so a
    server can tell them from first attempts; grpcio's own retries send it, and
    grpclb, which turns those off in pod channels, sends it in their place. A value
    the caller gave for the key is replaced.
    """
    if not previous:
        return metadata
    pairs = [(key, value) for key, value in metadata or () if key != PREVIOUS_ATTEMPTS_KEY]
    pairs.append((PREVIOUS_ATTEMPTS_KEY, str(previous)))
    return tuple(pairs)


class CallRun:
    """One logical call's progress through its policy; the drivers do what it decides."""

    __slots__ = (
        "_state",
        "attempt_deadline",
        "attempts",
        "deadline",
        "policy",
        "requests",
        "tried",
    )

    def __init__(
        self, policy: CallPolicy, deadline: float | None, requests: Replayed | None = None
    ) -> None:
        self.policy = policy
        self.deadline = deadline
        self.requests = requests  # a request stream's buffer: committed, no attempt may follow
        self.attempts = 1  # started so far
        self.tried: list[Endpoint] = []  # pods of earlier attempts, avoided by later ones
        self._state: tenacity.RetryCallState | None = None  # made on the first backoff
        self.attempt_deadline: float | None = None  # the current attempt's own, when it binds

    def attempt_timeout(self, now: float) -> float | None:
        """The timeout of an attempt of a unary-response call starting ``now``.

        What remains of the call's deadline, or the policy's ``perAttemptRecvTimeout``
        when that ends first: then the attempt's own end is noted, so that its
        DEADLINE_EXCEEDED is known for the attempt's timeout, not the call's
        (``retry_delay``). C core times the attempt until a response arrives; grpcio
        exposes only a deadline, so grpclb's covers the whole attempt
        (docs/service-config.md). Response streams keep the call's deadline.
        """
        deadline = self.deadline
        remaining = None if deadline is None else max(deadline - now, 0.0)
        limit = self.policy.attempt_timeout
        if limit is None or (remaining is not None and remaining <= limit):
            self.attempt_deadline = None
            return remaining
        self.attempt_deadline = now + limit
        return limit

    def add_try(self, endpoint: Endpoint) -> int:
        """Count an attempt starting on ``endpoint``; the attempts before it, which its
        ``grpc-previous-rpc-attempts`` reports (``with_previous_attempts``)."""
        previous = len(self.tried)
        self.tried.append(endpoint)
        return previous

    def retry_delay(
        self,
        code: grpc.StatusCode | None,
        trailing: Trailing,
        now: float,
        headers: Trailing | None = None,
    ) -> float | None:
        """Seconds to wait before the next attempt of a failed call, or None: it fails.

        ``headers``: the failed attempt's response headers; any at all commit the
        call (A6: "the RPC is committed" once the client receives them; grpcio
        cannot tell headers without metadata from a Trailers-Only answer, which
        may be retried). A grant from the retry budget is still needed before
        the retry starts.
        """
        policy = self.policy
        hedged = policy.hedging_delay is not None
        # An attempt its perAttemptRecvTimeout ended is retried whatever the codes say, as
        # C core retries it (a server's own DEADLINE_EXCEEDED, sent sooner, is a status).
        timed_out = code is grpc.StatusCode.DEADLINE_EXCEEDED and _reached(
            self.attempt_deadline, now
        )
        if (code not in policy.codes and not timed_out) or (policy.retrying is None and not hedged):
            return None
        # A hedging policy here (a response stream's, or an attempt nobody awaited): no
        # hedge runs beside the attempt, but a non-fatal failure is followed at once by
        # the next hedge on another pod, as A6 sends it.
        throttle = policy.throttle
        if throttle is not None:
            throttle.record_failure()  # (A6 counts it, committed or not)
        if headers is not None and headers():
            return None  # the server answered before failing: committed
        server_says = pushback(trailing())
        if server_says == _STOP or self.attempts >= policy.max_attempts:
            return None
        if self.requests is not None and self.requests.committed:
            return None  # A6: what was sent is no longer kept (or the caller's iterator raised)
        if throttle is not None and not throttle.allows():
            return None
        if server_says is not None:
            delay = server_says
            self._state = None  # A6: after a pushback, backoff starts again from the first
        else:
            delay = 0.0 if hedged else self._backoff()
        if not self.in_time(now, delay):
            # A retry never outlives the call's deadline. gRPC's implementations let the
            # deadline end such a call (DEADLINE_EXCEEDED, at the deadline); grpclb ends it
            # now with the attempt's own status, which says why, and holds no retry-budget
            # grant and no wait that a close() could not end (docs/service-config.md).
            return None
        return delay

    def _backoff(self) -> float:
        retrying = self.policy.retrying
        assert retrying is not None
        state = self._state
        if state is None:
            state = self._state = tenacity.RetryCallState(retrying, None, (), {})
        else:
            state.prepare_for_next_attempt()
        return float(retrying.wait(state))

    def succeeded(self) -> None:
        """The call ended well: A6's throttle earns a token back."""
        if self.policy.throttle is not None:
            self.policy.throttle.record_success()

    # --- hedging (A6) -----------------------------------------------------------------

    def ended_by_deadline(self, code: grpc.StatusCode | None, now: float) -> bool:
        """Whether an attempt's ``code`` is the call's own deadline passing.

        Hedges still running then reach the same deadline on their own, within
        milliseconds: they are left to end, not cancelled, so each is its pod's
        DEADLINE_EXCEEDED, as a lone attempt's would be (a cancelled hedge is no
        verdict on its pod, and which hedge ends first is a race).
        """
        return code is grpc.StatusCode.DEADLINE_EXCEEDED and _reached(self.deadline, now)

    def in_time(self, now: float, delay: float = 0.0) -> bool:
        """Whether an attempt starting ``delay`` seconds after ``now`` starts before the
        deadline: no retry or hedge is ever sent with no time left."""
        return self.deadline is None or now + delay < self.deadline

    def may_hedge(self, now: float) -> bool:
        """Another hedged attempt may start now (a budget grant is still needed)."""
        throttle = self.policy.throttle
        return (
            self.attempts < self.policy.max_attempts
            and self.in_time(now)
            and (throttle is None or throttle.allows())
        )

    def hedge_failed(
        self, code: grpc.StatusCode | None, trailing: Trailing, now: float
    ) -> tuple[bool, float | None]:
        """A hedged attempt failed: (is it the call's final answer?, the next hedge's delay).

        A6: a fatal status commits the call at once; after a non-fatal one the
        next hedge is sent at once, unless the server's pushback says when
        (or, negative, that no more hedges may be sent). A next hedge that
        could only start past the deadline is none: no further hedges.
        """
        if code not in self.policy.codes:
            return True, None
        throttle = self.policy.throttle
        if throttle is not None:
            throttle.record_failure()
        server_says = pushback(trailing())
        delay = server_says if server_says is not None else 0.0
        if server_says == _STOP or not self.in_time(now, delay):
            self.attempts = self.policy.max_attempts  # no further hedges
            return False, None
        return False, delay
