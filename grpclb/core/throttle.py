"""Placeholder token bucket (replaced by the service-config work)."""

from __future__ import annotations

import threading
from typing import Any


class RetryThrottle:
    def __init__(self, throttling: Any) -> None:
        self.max_tokens = float(throttling.max_tokens)
        self.token_ratio = float(throttling.token_ratio)
        self.tokens = self.max_tokens
        self._lock = threading.Lock()

    def allows(self) -> bool:
        return self.tokens > self.max_tokens / 2

    def record_failure(self) -> None:
        with self._lock:
            self.tokens = max(0.0, self.tokens - 1)

    def record_success(self) -> None:
        with self._lock:
            self.tokens = min(self.max_tokens, self.tokens + self.token_ratio)
