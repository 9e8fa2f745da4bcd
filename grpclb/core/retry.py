"""Retry decisions: whether a failed attempt is tried again, and after how long.

The decision is a pure function of the outcome, the attempt count and the
deadline, shared by the sync and asyncio call paths; only their drivers
differ (a blocking sleep or an ``await``). The backoff is tenacity's fully
jittered exponential, which is Envoy's: a random wait between 0 and
``base * 2**(n-1)``, capped at ``retry_backoff_max``.
"""

from __future__ import annotations

import grpc
import tenacity

from grpclb.config.settings import Settings


class RetryPolicy:
    """One channel's retry rules, built once."""

    __slots__ = ("_wait", "codes", "max_retries")

    def __init__(self, settings: Settings) -> None:
        self.max_retries = settings.retries
        self.codes = settings.retry_codes
        self._wait = tenacity.wait_random_exponential(
            multiplier=settings.retry_backoff_base, max=settings.retry_backoff_max
        )

    def backoff(self, retry_number: int) -> float:
        """Seconds to wait before retry number ``retry_number`` (1 for the first)."""
        state = tenacity.RetryCallState(None, None, (), {})  # type: ignore[arg-type]
        state.attempt_number = retry_number
        return float(self._wait(state))

    def delay_before_retry(
        self, code: grpc.StatusCode | None, retries_done: int, now: float, deadline: float | None
    ) -> float | None:
        """The wait before the next attempt, or None when the call must not be retried."""
        if code not in self.codes or retries_done >= self.max_retries:
            return None
        delay = self.backoff(retries_done + 1)
        if deadline is not None and now + delay >= deadline:
            return None  # a retry never outlives the call's deadline
        return delay
