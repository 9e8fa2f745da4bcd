"""Retry decisions: which outcomes are retried, and the jittered exponential backoff.

tenacity draws its jitter from the ``random`` module; tests that need an exact
value pin ``random.uniform`` to one end of its range, and the statistical test
only checks bounds, so no test depends on a seed.
"""

from __future__ import annotations

import random

import grpc
import pytest

from grpclb.config.settings import Settings
from grpclb.core.retry import RetryPolicy

C = grpc.StatusCode


def policy(**overrides: object) -> RetryPolicy:
    return RetryPolicy(Settings.load(overrides, environ={}))


@pytest.fixture
def jitter_high(monkeypatch: pytest.MonkeyPatch) -> None:
    """The full-jitter draw returns the top of its window."""
    monkeypatch.setattr(random, "uniform", lambda low, high: high)


@pytest.fixture
def jitter_low(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(random, "uniform", lambda low, high: low)


# Envoy's defaults: 25 ms base, 250 ms cap.
WINDOWS = [(1, 0.025), (2, 0.05), (3, 0.1), (4, 0.2), (5, 0.25), (6, 0.25), (10, 0.25), (60, 0.25)]


@pytest.mark.parametrize(("retry_number", "window"), WINDOWS, ids=[f"retry{n}" for n, _ in WINDOWS])
def test_backoff_window_is_base_doubling_capped(
    jitter_high: None, retry_number: int, window: float
) -> None:
    assert policy().backoff(retry_number) == pytest.approx(window)


@pytest.mark.parametrize("retry_number", [1, 3, 10])
def test_backoff_can_be_zero(jitter_low: None, retry_number: int) -> None:
    assert policy().backoff(retry_number) == 0.0


@pytest.mark.parametrize(
    ("base", "cap"), [(0.025, 0.25), (0.1, 1.0), (0.01, 0.01), (1.0, 5.0)], ids=str
)
def test_backoff_stays_in_its_window(base: float, cap: float) -> None:
    retry = policy(retry_backoff_base=base, retry_backoff_max=cap)
    for n in range(1, 9):
        window = min(base * 2 ** (n - 1), cap)
        delays = [retry.backoff(n) for _ in range(200)]
        assert all(0.0 <= d <= window for d in delays), n
        assert max(delays) > window / 2  # jittered over the window, not stuck at zero


@pytest.mark.parametrize(
    ("overrides", "code", "retries_done", "now", "deadline", "retried"),
    [
        ({}, C.UNAVAILABLE, 0, 0.0, None, True),
        ({}, C.UNAVAILABLE, 1, 0.0, None, True),
        ({}, C.UNAVAILABLE, 2, 0.0, None, False),  # beyond max retries (2)
        ({}, C.UNAVAILABLE, 5, 0.0, None, False),
        ({"retries": 0}, C.UNAVAILABLE, 0, 0.0, None, False),
        ({"retries": 5}, C.UNAVAILABLE, 4, 0.0, None, True),
        ({}, C.NOT_FOUND, 0, 0.0, None, False),
        ({}, C.INTERNAL, 0, 0.0, None, False),
        ({}, C.DEADLINE_EXCEEDED, 0, 0.0, None, False),
        ({}, C.OK, 0, 0.0, None, False),
        ({}, None, 0, 0.0, None, False),  # no status (cancelled)
        (
            {"retry_codes": "UNAVAILABLE,RESOURCE_EXHAUSTED"},
            C.RESOURCE_EXHAUSTED,
            0,
            0.0,
            None,
            True,
        ),
        ({"retry_codes": "RESOURCE_EXHAUSTED"}, C.UNAVAILABLE, 0, 0.0, None, False),
        ({}, C.UNAVAILABLE, 0, 10.0, 20.0, True),
        ({}, C.UNAVAILABLE, 0, 10.0, 10.0, False),  # at the deadline
        ({}, C.UNAVAILABLE, 0, 10.0, 9.0, False),  # past the deadline
    ],
    ids=[
        "first_retry",
        "second_retry",
        "beyond_max",
        "far_beyond_max",
        "retries_off",
        "more_retries",
        "not_found",
        "internal",
        "deadline_exceeded",
        "ok",
        "no_status",
        "extra_retry_code",
        "code_not_listed",
        "deadline_far",
        "at_deadline",
        "past_deadline",
    ],
)
def test_delay_before_retry(
    overrides: dict[str, object],
    code: grpc.StatusCode | None,
    retries_done: int,
    now: float,
    deadline: float | None,
    retried: bool,
) -> None:
    retry = policy(**overrides)
    delay = retry.delay_before_retry(code, retries_done, now, deadline)
    assert (delay is not None) is retried
    if delay is not None:
        window = min(0.025 * 2**retries_done, 0.25)
        assert 0.0 <= delay <= window


@pytest.mark.parametrize(
    ("deadline", "retried"), [(10.025, False), (10.0249, False), (10.0251, True)], ids=str
)
def test_retry_never_outlives_the_deadline(
    jitter_high: None, deadline: float, retried: bool
) -> None:
    delay = policy().delay_before_retry(C.UNAVAILABLE, 0, 10.0, deadline)
    assert (delay is not None) is retried
    if delay is not None:
        assert 10.0 + delay < deadline


def test_delay_grows_with_the_retry_number(jitter_high: None) -> None:
    retry = policy(retries=5)
    delays = [retry.delay_before_retry(C.UNAVAILABLE, n, 0.0, None) for n in range(5)]
    assert delays == pytest.approx([0.025, 0.05, 0.1, 0.2, 0.25])


def test_policy_reads_its_settings() -> None:
    retry = policy(retries=3, retry_codes="UNAVAILABLE,ABORTED")
    assert retry.max_retries == 3
    assert retry.codes == frozenset({C.UNAVAILABLE, C.ABORTED})
