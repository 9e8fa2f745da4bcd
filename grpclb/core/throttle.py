"""The retry throttle of gRFC A6: a token bucket shared by every call of a channel.

When a service is failing, retries multiply its load; the throttle stops them
once too many recent calls failed. Tokens start full; every failed attempt
takes one away, every success gives back ``token_ratio``; retries and hedges
are allowed only while more than half the bucket is left. Pure and
thread-safe: the call engine asks and reports, the bucket does no I/O.
"""

from __future__ import annotations

import threading

from grpclb.config.service_config import RetryThrottling


class RetryThrottle:
    """gRFC A6 retryThrottling, counted in thousandths of a token (exact, as gRPC's C core)."""

    def __init__(self, config: RetryThrottling) -> None:
        self.config = config
        # Thousandths keep the arithmetic exact: A6 limits tokenRatio to 3 decimal places.
        self._max = round(config.max_tokens * 1000)
        self._ratio = round(config.token_ratio * 1000)
        # gRFC A6: retries and hedges are allowed only while tokens > max_tokens / 2
        self._threshold = self._max / 2
        self._tokens = self._max  # the bucket starts full
        self._lock = threading.Lock()

    @property
    def tokens(self) -> float:
        """Tokens left, in tokens."""
        return self._tokens / 1000

    def allows(self) -> bool:
        """Whether a retry or a hedge may start now."""
        return self._tokens > self._threshold  # one int read: no lock needed

    def record_failure(self) -> None:
        """An attempt failed in a way A6 counts (a retryable or non-fatal code, or pushback)."""
        with self._lock:
            self._tokens = max(0, self._tokens - 1000)

    def record_success(self) -> None:
        """An attempt succeeded."""
        with self._lock:
            self._tokens = min(self._max, self._tokens + self._ratio)

    def __repr__(self) -> str:
        state = "allowing" if self.allows() else "throttling"
        return (
            f"<RetryThrottle {state} tokens={self.tokens:g}/{self._max / 1000:g} "
            f"ratio={self._ratio / 1000:g}>"
        )
