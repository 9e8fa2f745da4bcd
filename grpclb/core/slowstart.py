"""Slow start, Envoy's semantics: a new or returning pod's weight ramps up over a window.

A pod that joins a running set, returns from ejection, or turns SERVING again
after an unhealthy status starts at a low weight that grows to a full one over
``slow_start_window``, so a cold cache or JIT is not flooded at once. Pods
present when the channel is created start at full weight.

Pure: the weights are computed from the time each ramp began and a clock
reading the balancer passes in, when it builds a snapshot; the balancer
rebuilds the snapshot every tenth of the window while any pod ramps.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from grpclb.core.endpoints import Endpoint

if TYPE_CHECKING:
    from grpclb.config.settings import Settings

# Envoy supports slow start in round robin and least request; random takes weights too.
WEIGHTED_POLICIES = ("round_robin", "least_request", "random")
REFRESHES_PER_WINDOW = 10


def weight_factor(elapsed: float, window: float, aggression: float, min_percent: float) -> float:
    """The share of its full weight a pod gets ``elapsed`` seconds into its ramp.

    "NewWeight = Weight * max(MinWeightPercent, TimeFactor ^ (1 / Aggression))",
    "TimeFactor = max(TimeSinceStartInSeconds, 1) / SlowStartWindowInSeconds" - Envoy
    slow start mode.
    """
    if elapsed >= window:
        return 1.0
    time_factor = max(elapsed, 1.0) / window
    ramped: float = time_factor ** (1.0 / aggression)
    return min(1.0, max(min_percent / 100.0, ramped))


class SlowStart:
    """The configured ramp, and the weights of one snapshot (call with the lock held)."""

    __slots__ = ("_aggression", "_min_percent", "_window", "enabled")

    def __init__(self, settings: Settings) -> None:
        self._window = settings.slow_start_window
        self._aggression = settings.slow_start_aggression
        self._min_percent = settings.slow_start_min_weight_percent
        self.enabled = self._window is not None and settings.policy in WEIGHTED_POLICIES

    def start(self, endpoint: Endpoint, now: float) -> None:
        """The pod's ramp begins now (nothing happens when slow start is off)."""
        if self.enabled:
            endpoint.ramp_from = now

    def weight_of(self, endpoint: Endpoint, now: float) -> float:
        """The pod's current share of a full weight (1.0 when not ramping)."""
        started = endpoint.ramp_from
        if not self.enabled or self._window is None or started is None:
            return 1.0
        return weight_factor(now - started, self._window, self._aggression, self._min_percent)

    def weights(
        self, endpoints: Sequence[Endpoint], now: float
    ) -> tuple[tuple[float, ...] | None, float | None]:
        """(one weight per endpoint, or None when all are full; when to recompute them).

        A ramp that is over is forgotten, so a settled set costs nothing.
        """
        if not self.enabled or self._window is None:
            return None, None
        window = self._window
        weights = []
        ramping = False
        for endpoint in endpoints:
            started = endpoint.ramp_from
            if started is None:
                weights.append(1.0)
                continue
            if now - started >= window:
                endpoint.ramp_from = None
            else:
                ramping = True
            elapsed = now - started
            weights.append(weight_factor(elapsed, window, self._aggression, self._min_percent))
        if not ramping or all(w == weights[0] for w in weights):
            due = now + window / REFRESHES_PER_WINDOW if ramping else None
            return None, due  # equal weights: the plain pickers are exact and cheaper
        return tuple(weights), now + window / REFRESHES_PER_WINDOW

    def __repr__(self) -> str:
        if not self.enabled:
            return "<SlowStart off>"
        return (
            f"<SlowStart window={self._window:g}s aggression={self._aggression:g} "
            f"min={self._min_percent:g}%>"
        )
