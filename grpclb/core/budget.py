"""Envoy's retry budget: retries (and hedges) in flight stay under a share of calls in flight.

These are the balancer's methods (a mixin of ``Balancer``), kept apart because
they are one idea. The counts they read are the balancer's: attempts in flight
(``_in_flight``), granted retries (``_retries_in_flight``), and granted retries
whose attempt has not started yet (``_retries_waiting``, moved to attempts by
``start_call(retry=True)``, given back by ``cancel_retry``).
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from grpclb.config.settings import Settings
    from grpclb.telemetry import Telemetry


class RetryBudget:
    """Grants and gives back retries (a part of ``Balancer``)."""

    settings: Settings
    telemetry: Telemetry
    counters: dict[str, int]
    _lock: threading.Lock
    _in_flight: int
    _retries_in_flight: int
    _retries_waiting: int

    def reserve_retry(self) -> bool:
        """Envoy's retry budget: retries in flight stay under a share of calls in flight.

        A call waiting out its backoff is still a call in flight, and so is the
        call asking (as Envoy counts the request it retries): the base is
        attempts in flight plus granted retries not yet started plus one, so a
        burst of failures does not shrink the base its retries are measured
        against. The share is truncated, as Envoy's is. A granted retry counts
        from now (its backoff included) until its attempt is released or
        ``cancel_retry()``, so retries decided at the same moment cannot all
        pass the same check. Hedges are granted the same way.
        """
        s = self.settings
        with self._lock:
            active = self._in_flight + self._retries_waiting + 1
            allowed = max(
                s.retry_budget_min_concurrency, int(s.retry_budget_percent * active / 100)
            )
            granted = self._retries_in_flight < allowed
            if granted:
                self._retries_in_flight += 1
                self._retries_waiting += 1
                self.counters["retries"] += 1
            else:
                self.counters["retries_refused"] += 1
            self.telemetry.retry(granted)
            return granted

    def cancel_retry(self) -> None:
        """A granted retry that never started (no pod, deadline, cancelled)."""
        with self._lock:
            self._retries_in_flight -= 1
            self._retries_waiting -= 1
