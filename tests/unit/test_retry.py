"""Retry and hedging decisions (grpclb.core.retry): pure values, injected randomness.

The drivers (sync blocking, futures, streams, asyncio) only execute what these
decide, so the rules of gRFC A6 and of grpclb's channel-wide retries are
tested here, without sockets.
"""

from __future__ import annotations

import random
from typing import Any

import grpc
import pytest

from grpclb.config.service_config import parse_service_config
from grpclb.config.settings import Settings
from grpclb.core.retry import (
    NO_RETRIES,
    CallRun,
    channel_policy,
    method_policy,
    pushback,
    with_previous_attempts,
)
from grpclb.core.throttle import RetryThrottle

C = grpc.StatusCode
METHOD = "/pkg.Svc/Do"


class Edge(random.Random):
    """A random source whose uniform draw is one end of its window."""

    def __init__(self, high: bool) -> None:
        super().__init__(0)
        self.high = high

    def uniform(self, a: float, b: float) -> float:
        return b if self.high else a


def settings(**overrides: object) -> Settings:
    return Settings.load(overrides, environ={})


def no_trailing() -> Any:
    return None


def trailing(value: str) -> Any:
    return lambda: [("grpc-retry-pushback-ms", value)]


def delays(run: CallRun, n: int) -> list[float | None]:
    out = []
    for _ in range(n):
        delay = run.retry_delay(C.UNAVAILABLE, no_trailing, 0.0)
        out.append(delay)
        run.attempts += 1
    return out


# Envoy's defaults: 25 ms base, 250 ms cap, doubling.
def test_channel_backoff_windows_double_up_to_the_cap() -> None:
    policy = channel_policy(settings(retries=8), Edge(high=True))
    run = CallRun(policy, None)
    got = delays(run, 9)
    assert got[:8] == pytest.approx([0.025, 0.05, 0.1, 0.2, 0.25, 0.25, 0.25, 0.25])
    assert got[8] is None  # past retries=8


def test_channel_backoff_can_be_zero() -> None:
    run = CallRun(channel_policy(settings(retries=3), Edge(high=False)), None)
    assert delays(run, 3) == [0.0, 0.0, 0.0]


def test_channel_retries_stop_after_retries_and_on_other_codes() -> None:
    run = CallRun(channel_policy(settings(retries=2), Edge(high=True)), None)
    assert run.retry_delay(C.NOT_FOUND, no_trailing, 0.0) is None
    assert delays(run, 3)[2] is None  # 1 + 2 attempts


def test_retries_zero_is_no_policy() -> None:
    assert channel_policy(settings(retries=0), random.Random()) is NO_RETRIES


def test_a_retry_never_outlives_the_deadline() -> None:
    run = CallRun(channel_policy(settings(), Edge(high=True)), deadline=10.0)
    assert run.retry_delay(C.UNAVAILABLE, no_trailing, 9.99) is None
    assert run.retry_delay(C.UNAVAILABLE, no_trailing, 10.5) is None
    pushed = CallRun(channel_policy(settings(), Edge(high=False)), deadline=10.0)
    assert pushed.retry_delay(C.UNAVAILABLE, trailing("5000"), 9.0) is None
    early = CallRun(channel_policy(settings(), Edge(high=True)), deadline=10.0)
    delay = early.retry_delay(C.UNAVAILABLE, no_trailing, 1.0)
    assert delay is not None and delay < 9.0  # in time: the backoff itself


def config(method_config: dict[str, Any], **top: Any) -> Any:
    entry = {"name": [{"service": "pkg.Svc", "method": "Do"}], **method_config}
    return parse_service_config({"methodConfig": [entry], **top})


RETRY = {
    "maxAttempts": 4,
    "initialBackoff": "0.1s",
    "maxBackoff": "1s",
    "backoffMultiplier": 3,
    "retryableStatusCodes": ["UNAVAILABLE", "RESOURCE_EXHAUSTED"],
}


def policy_of(method_config: dict[str, Any], request_stream: bool = False, **top: Any) -> Any:
    s = settings(service_config=config(method_config, **top).source)
    return method_policy(s, METHOD, request_stream, Edge(high=True))


def test_a6_backoff_is_initial_times_multiplier_capped() -> None:
    run = CallRun(policy_of({"retryPolicy": RETRY}), None)
    # A6: "random(0, min(initialBackoff*backoffMultiplier**(n-1), maxBackoff))"
    assert delays(run, 4) == [pytest.approx(0.1), pytest.approx(0.3), pytest.approx(0.9), None]


def test_a6_retries_only_its_codes_and_exactly_max_attempts() -> None:
    policy = policy_of({"retryPolicy": RETRY})
    assert policy.max_attempts == 4
    run = CallRun(policy, None)
    assert run.retry_delay(C.UNAVAILABLE, no_trailing, 0.0) is not None
    assert run.retry_delay(C.RESOURCE_EXHAUSTED, no_trailing, 0.0) is not None
    assert run.retry_delay(C.INTERNAL, no_trailing, 0.0) is None


TIMED = {**RETRY, "perAttemptRecvTimeout": "0.5s", "retryableStatusCodes": ["UNAVAILABLE"]}


def test_an_attempt_gets_the_per_attempt_timeout_or_what_remains_of_the_deadline() -> None:
    policy = policy_of({"retryPolicy": TIMED})
    assert policy.attempt_timeout == 0.5
    run = CallRun(policy, deadline=10.0)
    assert run.attempt_timeout(now=1.0) == 0.5  # its own limit ends first
    assert run.attempt_deadline == 1.5
    assert run.attempt_timeout(now=9.8) == pytest.approx(0.2)  # the call's deadline does
    assert run.attempt_deadline is None
    assert CallRun(policy, deadline=None).attempt_timeout(now=1.0) == 0.5
    no_limit = CallRun(policy_of({"retryPolicy": RETRY}), deadline=None)
    assert no_limit.attempt_timeout(now=1.0) is None
    assert no_limit.attempt_deadline is None


def test_an_attempt_its_timeout_ended_is_retried_whatever_the_codes() -> None:
    run = CallRun(policy_of({"retryPolicy": TIMED}), deadline=10.0)
    run.attempt_timeout(now=1.0)  # ends at 1.5
    assert run.retry_delay(C.DEADLINE_EXCEEDED, no_trailing, 1.5) is not None
    # A server's own DEADLINE_EXCEEDED, before the attempt's timeout: a status, not retryable.
    run.attempt_timeout(now=2.0)
    assert run.retry_delay(C.DEADLINE_EXCEEDED, no_trailing, 2.1) is None
    # The call's own deadline ended it: no retry either.
    run.attempt_timeout(now=9.8)
    assert run.retry_delay(C.DEADLINE_EXCEEDED, no_trailing, 10.0) is None


def test_a_timed_out_attempt_still_obeys_max_attempts_headers_and_the_throttle() -> None:
    sc = config({"retryPolicy": TIMED}, retryThrottling={"maxTokens": 4, "tokenRatio": 0.5})
    assert sc.retry_throttling is not None
    throttle = RetryThrottle(sc.retry_throttling)
    policy = method_policy(settings(service_config=sc.source), METHOD, False, Edge(True), throttle)
    outcomes = []
    for _ in range(2):  # each timeout takes a token: 4 -> 3 (allowed), 3 -> 2 (refused)
        run = CallRun(policy, None)
        run.attempt_timeout(now=0.0)
        outcomes.append(run.retry_delay(C.DEADLINE_EXCEEDED, no_trailing, 0.5) is not None)
    assert outcomes == [True, False]
    run = CallRun(policy_of({"retryPolicy": TIMED}), None)
    run.attempt_timeout(now=0.0)
    headers = lambda: [("k", "v")]  # noqa: E731 - the attempt answered: committed
    assert run.retry_delay(C.DEADLINE_EXCEEDED, no_trailing, 0.5, headers) is None
    run.attempts = 4
    assert run.retry_delay(C.DEADLINE_EXCEEDED, no_trailing, 0.5) is None


def test_retryable_codes_may_be_absent_with_a_per_attempt_timeout() -> None:
    policy = policy_of(
        {"retryPolicy": {k: v for k, v in TIMED.items() if k != "retryableStatusCodes"}}
    )
    run = CallRun(policy, deadline=None)
    run.attempt_timeout(now=0.0)
    assert run.retry_delay(C.UNAVAILABLE, no_trailing, 0.1) is None  # no codes to retry
    assert run.retry_delay(C.DEADLINE_EXCEEDED, no_trailing, 0.5) is not None


def test_only_the_calls_own_deadline_passing_leaves_the_other_hedges_running() -> None:
    run = CallRun(policy_of({"hedgingPolicy": {"maxAttempts": 3}}), deadline=10.0)
    assert run.ended_by_deadline(C.DEADLINE_EXCEEDED, 10.0)
    assert not run.ended_by_deadline(C.DEADLINE_EXCEEDED, 9.0)  # the server's own status
    assert not run.ended_by_deadline(C.INTERNAL, 10.0)
    assert not CallRun(run.policy, deadline=None).ended_by_deadline(C.DEADLINE_EXCEEDED, 10.0)


def test_max_attempts_above_five_is_five() -> None:
    assert policy_of({"retryPolicy": {**RETRY, "maxAttempts": 9}}).max_attempts == 5


@pytest.mark.parametrize(
    ("value", "expected"),
    [("250", 0.25), ("0", 0.0), ("-1", -1.0), ("soon", -1.0), ("1.5", -1.0), ("٣", -1.0)],
)
def test_pushback_values(value: str, expected: float) -> None:
    assert pushback([("grpc-retry-pushback-ms", value)]) == expected


def test_pushback_sets_the_delay_and_restarts_the_backoff() -> None:
    run = CallRun(policy_of({"retryPolicy": RETRY}), None)
    assert run.retry_delay(C.UNAVAILABLE, no_trailing, 0.0) == pytest.approx(0.1)
    run.attempts += 1
    assert run.retry_delay(C.UNAVAILABLE, trailing("700"), 0.0) == pytest.approx(0.7)
    run.attempts += 1
    # A6: after a pushback the backoff starts again from initialBackoff.
    assert run.retry_delay(C.UNAVAILABLE, no_trailing, 0.0) == pytest.approx(0.1)


def test_a_negative_pushback_stops_retries() -> None:
    run = CallRun(policy_of({"retryPolicy": RETRY}), None)
    assert run.retry_delay(C.UNAVAILABLE, trailing("-1"), 0.0) is None


def test_retry_policy_null_turns_retries_off_while_other_methods_keep_them() -> None:
    s = settings(service_config=config({"retryPolicy": None}).source, retries=2)
    assert method_policy(s, METHOD, False, random.Random()).max_attempts == 1
    assert method_policy(s, "/pkg.Other/Do", False, random.Random()).max_attempts == 3


def test_a_method_config_without_a_policy_keeps_channel_retries_and_adds_limits() -> None:
    policy = policy_of({"timeout": "1.5s", "waitForReady": True})
    assert (policy.max_attempts, policy.timeout, policy.wait_for_ready) == (3, 1.5, True)


def test_request_streams_are_retried_but_never_hedged() -> None:
    assert policy_of({"retryPolicy": RETRY}, request_stream=True).max_attempts == 4
    assert policy_of({"timeout": "1s"}, request_stream=True).max_attempts == 3  # channel retries
    hedging = {"maxAttempts": 3, "hedgingDelay": "0.1s"}
    policy = policy_of({"hedgingPolicy": hedging, "timeout": "2s"}, request_stream=True)
    assert (policy.max_attempts, policy.hedging, policy.timeout) == (1, False, 2.0)


class _Buffer:
    committed = False


def test_a_committed_request_stream_is_not_retried() -> None:
    buffer = _Buffer()
    run = CallRun(policy_of({"retryPolicy": RETRY}, request_stream=True), None, buffer)
    assert run.retry_delay(C.UNAVAILABLE, no_trailing, 0.0) is not None
    run.attempts += 1
    buffer.committed = True
    assert run.retry_delay(C.UNAVAILABLE, no_trailing, 0.0) is None


def test_throttling_stops_retries_below_half_the_tokens() -> None:
    sc = config({"retryPolicy": RETRY}, retryThrottling={"maxTokens": 4, "tokenRatio": 0.5})
    s = settings(service_config=sc.source)
    assert sc.retry_throttling is not None
    throttle = RetryThrottle(sc.retry_throttling)
    policy = method_policy(s, METHOD, False, Edge(high=True), throttle)
    # Each failure takes a token: 4 -> 3 (allowed), 3 -> 2 (2 is not above 4/2: refused).
    assert CallRun(policy, None).retry_delay(C.UNAVAILABLE, no_trailing, 0.0) is not None
    assert CallRun(policy, None).retry_delay(C.UNAVAILABLE, no_trailing, 0.0) is None
    run = CallRun(policy, None)
    run.succeeded()
    run.succeeded()  # +1 token in all: 2 -> 3
    assert throttle.allows()


def test_a_failure_committed_by_headers_still_costs_a_throttle_token() -> None:
    sc = config({"retryPolicy": RETRY}, retryThrottling={"maxTokens": 4, "tokenRatio": 0.5})
    s = settings(service_config=sc.source)
    assert sc.retry_throttling is not None
    throttle = RetryThrottle(sc.retry_throttling)
    policy = method_policy(s, METHOD, False, Edge(high=True), throttle)
    headers = lambda: [("k", "v")]  # noqa: E731
    assert CallRun(policy, None).retry_delay(C.UNAVAILABLE, no_trailing, 0.0, headers) is None
    # A6 counts every failure with a retryable code: 4 -> 3 tokens, then 3 -> 2: refused.
    assert CallRun(policy, None).retry_delay(C.UNAVAILABLE, no_trailing, 0.0) is None


HEDGING = {"maxAttempts": 3, "hedgingDelay": "0.2s", "nonFatalStatusCodes": ["UNAVAILABLE"]}


def test_hedging_policy_values() -> None:
    policy = policy_of({"hedgingPolicy": HEDGING})
    assert policy.hedging and policy.hedging_delay == pytest.approx(0.2)
    run = CallRun(policy, None)
    assert run.may_hedge(0.0)
    run.attempts = 3
    assert not run.may_hedge(0.0)


def test_a_fatal_status_commits_a_hedged_call() -> None:
    run = CallRun(policy_of({"hedgingPolicy": HEDGING}), None)
    assert run.hedge_failed(C.INVALID_ARGUMENT, no_trailing, 0.0) == (True, None)


def test_a_non_fatal_status_sends_the_next_hedge_at_once_or_after_pushback() -> None:
    run = CallRun(policy_of({"hedgingPolicy": HEDGING}), None)
    assert run.hedge_failed(C.UNAVAILABLE, no_trailing, 0.0) == (False, 0.0)
    assert run.hedge_failed(C.UNAVAILABLE, trailing("300"), 0.0) == (False, pytest.approx(0.3))
    assert run.hedge_failed(C.UNAVAILABLE, trailing("-5"), 0.0) == (False, None)
    assert not run.may_hedge(0.0)  # a negative pushback: no more hedges


def test_a_hedged_attempt_decided_one_at_a_time_hedges_at_once_after_a_non_fatal_status() -> None:
    # A response stream (or an asyncio call nobody awaits) under a hedging policy: its
    # failures are decided one at a time, and A6's rule for them holds.
    run = CallRun(policy_of({"hedgingPolicy": HEDGING}), None)
    assert run.retry_delay(C.INVALID_ARGUMENT, no_trailing, 0.0) is None  # fatal
    assert delays(run, 3) == [0.0, 0.0, None]  # at once, then maxAttempts is reached
    run = CallRun(policy_of({"hedgingPolicy": HEDGING}), None)
    assert run.retry_delay(C.UNAVAILABLE, trailing("300"), 0.0) == pytest.approx(0.3)
    assert run.retry_delay(C.UNAVAILABLE, trailing("-1"), 0.0) is None
    assert run.retry_delay(C.UNAVAILABLE, no_trailing, 0.0, lambda: [("k", "v")]) is None
    assert CallRun(NO_RETRIES, None).retry_delay(C.UNAVAILABLE, no_trailing, 0.0) is None


def test_response_headers_commit_the_call() -> None:
    run = CallRun(policy_of({"retryPolicy": RETRY}), None)
    # A6: once the server answered with headers, the call is committed.
    assert run.retry_delay(C.UNAVAILABLE, no_trailing, 0.0, lambda: [("k", "v")]) is None
    # A Trailers-Only failure (no headers) may be retried.
    assert run.retry_delay(C.UNAVAILABLE, no_trailing, 0.0, lambda: ()) is not None


def test_later_attempts_say_how_many_came_before() -> None:
    # A6 "Exposed Retry Metadata"; a value the caller gave for the key is replaced.
    given = (("x-user", "7"), ("grpc-previous-rpc-attempts", "9"))
    assert with_previous_attempts(given, 0) is given
    assert with_previous_attempts(None, 0) is None
    assert with_previous_attempts(None, 2) == (("grpc-previous-rpc-attempts", "2"),)
    assert with_previous_attempts(given, 1) == (
        ("x-user", "7"),
        ("grpc-previous-rpc-attempts", "1"),
    )
