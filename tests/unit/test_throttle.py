"""The gRFC A6 retry throttle: a token bucket that stops retries while a service fails."""

from __future__ import annotations

import threading

from grpclb.config.service_config import RetryThrottling
from grpclb.core.throttle import RetryThrottle


def test_starts_full_and_allowing() -> None:
    throttle = RetryThrottle(RetryThrottling(max_tokens=10, token_ratio=0.1))
    assert throttle.tokens == 10
    assert throttle.allows()


def test_retries_stop_at_half_the_bucket_and_resume_above_it() -> None:
    throttle = RetryThrottle(RetryThrottling(max_tokens=10, token_ratio=0.1))
    for _ in range(4):
        throttle.record_failure()
    assert (throttle.tokens, throttle.allows()) == (6, True)
    throttle.record_failure()
    # A6: allowed only while tokens > max_tokens / 2; exactly half is throttled.
    assert (throttle.tokens, throttle.allows()) == (5, False)
    throttle.record_success()
    assert (throttle.tokens, throttle.allows()) == (5.1, True)


def test_tokens_stay_between_zero_and_max() -> None:
    throttle = RetryThrottle(RetryThrottling(max_tokens=3, token_ratio=1.5))
    for _ in range(10):
        throttle.record_failure()
    assert throttle.tokens == 0
    for _ in range(10):
        throttle.record_success()
    assert throttle.tokens == 3


def test_a_fractional_ratio_adds_up_exactly() -> None:
    throttle = RetryThrottle(RetryThrottling(max_tokens=100, token_ratio=0.001))
    throttle.record_failure()
    for _ in range(1000):
        throttle.record_success()
    assert throttle.tokens == 100  # 1000 x 0.001 with no floating-point drift


def test_concurrent_updates_are_not_lost() -> None:
    throttle = RetryThrottle(RetryThrottling(max_tokens=1000, token_ratio=1))
    start = threading.Barrier(4)

    def fail_100() -> None:
        start.wait()
        for _ in range(100):
            throttle.record_failure()

    threads = [threading.Thread(target=fail_100) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=10)
    assert throttle.tokens == 600


def test_repr_shows_state() -> None:
    throttle = RetryThrottle(RetryThrottling(max_tokens=2, token_ratio=0.5))
    assert repr(throttle) == "<RetryThrottle allowing tokens=2/2 ratio=0.5>"
    throttle.record_failure()
    assert repr(throttle) == "<RetryThrottle throttling tokens=1/2 ratio=0.5>"
