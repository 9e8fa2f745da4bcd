"""Active health checking (gRFC A17) in the core: codec, meaning of answers, backoff, rotation.

The Watch streams are the shells' I/O; here the core is driven by hand with
``health_changed``, as a stream's answers would drive it.
"""

from __future__ import annotations

import logging
import random
from collections import Counter

import grpc
import pytest
from grpc_health.v1 import health_pb2

from grpclb.core import health
from grpclb.core.health import WatchBackoff
from tests.unit.test_balancer import CC, A, B, D, Harness

C = grpc.StatusCode
Status = health_pb2.HealthCheckResponse


@pytest.mark.parametrize("service", ["", "grpc.health.v1.Health", "x" * 200, "é"])
def test_request_encoding_matches_protobuf(service: str) -> None:
    expected = health_pb2.HealthCheckRequest(service=service).SerializeToString()
    assert health.encode_request(service) == expected


def test_response_decoding_matches_protobuf_and_skips_unknown_fields() -> None:
    for _, value in Status.ServingStatus.items():
        assert health.decode_status(Status(status=value).SerializeToString()) == value
    # an unknown length-delimited field 2 and a varint field 3 around the status
    data = b"\x12\x03abc" + Status(status=2).SerializeToString() + b"\x18\x96\x01"
    assert health.decode_status(data) == 2
    assert health.decode_status(b"") == 0  # proto3: an absent status is UNKNOWN


@pytest.mark.parametrize(
    ("status", "state", "in_rotation"),
    [
        (1, health.SERVING, True),
        (2, health.NOT_SERVING, False),
        (3, health.SERVICE_UNKNOWN, False),
        (0, health.UNKNOWN, False),
        (9, health.UNKNOWN, False),
    ],
)
def test_answers_map_onto_states(status: int, state: str, in_rotation: bool) -> None:
    assert health.state_of_status(status) == state
    assert health.is_unhealthy(state) is not in_rotation


def test_unimplemented_means_no_health_service_and_other_ends_are_retried() -> None:
    assert health.state_after_error(C.UNIMPLEMENTED) == health.UNIMPLEMENTED
    for code in (C.UNAVAILABLE, C.CANCELLED, C.INTERNAL, C.OK, None):
        assert health.state_after_error(code) == health.PENDING


def test_backoff_first_attempt_at_once_then_jittered_exponential_and_bounded() -> None:
    backoff = WatchBackoff(random.Random(3))
    delays = [backoff.next_delay() for _ in range(30)]
    assert delays[0] == 0.0
    for n, delay in enumerate(delays[1:], start=1):
        nominal = min(health.BACKOFF_BASE_S * health.BACKOFF_MULTIPLIER ** (n - 1), 120.0)
        assert nominal * 0.8 <= delay <= nominal * 1.2
    assert max(delays) <= health.BACKOFF_MAX_S * 1.2
    assert len(set(delays[-5:])) == 5  # jittered, even at the cap


def test_an_answer_resets_the_backoff_so_the_next_attempt_is_immediate() -> None:
    backoff = WatchBackoff(random.Random(3))
    backoff.next_delay()
    assert backoff.next_delay() > 0
    backoff.answered()
    assert backoff.next_delay() == 0.0
    assert backoff.next_delay() >= 0.8  # a failure without an answer backs off again


# --- the balancer ---


def healthy_harness(**settings: object) -> Harness:
    h = Harness(health_check=True, policy="round_robin", **settings)
    h.resolve(A, B, CC, D)
    h.ready(A, B, CC, D)
    return h


def answer(h: Harness, address: str, state: str) -> None:
    h.balancer.health_changed(h.active(address), state)


def test_connections_start_pending_with_health_checking_and_disabled_without() -> None:
    h = healthy_harness()
    assert {r.health for r in h.rows().values()} == {health.PENDING}
    off = Harness(policy="round_robin")
    off.resolve(A, B)
    assert {r.health for r in off.rows().values()} == {health.DISABLED}


def test_a_pod_awaiting_its_first_answer_is_not_picked_while_others_answered() -> None:
    h = healthy_harness()
    answer(h, A, health.SERVING)
    answer(h, B, health.SERVING)
    assert set(h.picks(40)) == {A, B}  # A17: CONNECTING until the first response


def test_calls_queue_on_pending_pods_when_none_has_answered_yet() -> None:
    h = healthy_harness()
    assert set(h.picks(40)) == {A, B, CC, D}


@pytest.mark.parametrize("state", [health.NOT_SERVING, health.SERVICE_UNKNOWN, health.UNKNOWN])
def test_unhealthy_leaves_rotation_calls_on_it_finish_and_serving_brings_it_back(
    state: str,
) -> None:
    h = healthy_harness()
    for address in (A, B, CC, D):
        answer(h, address, health.SERVING)
    on_a = h.call_on(A)
    answer(h, A, state)
    assert h.rows()[A].state == "unhealthy"
    assert A not in h.picks(60)
    on_a.release(C.OK)  # the call already on it ends normally
    assert h.rows()[A].in_flight == 0 and h.rows()[A].failures == 0
    answer(h, A, health.SERVING)
    assert h.rows()[A].state == "ready"
    assert Counter(h.picks(40)) == {A: 10, B: 10, CC: 10, D: 10}


def test_unimplemented_stays_in_rotation_with_one_warning_per_pod(
    caplog: pytest.LogCaptureFixture,
) -> None:
    h = healthy_harness()
    for address in (B, CC, D):
        answer(h, address, health.SERVING)
    with caplog.at_level(logging.WARNING, logger="grpclb"):
        answer(h, A, health.UNIMPLEMENTED)
        answer(h, A, health.PENDING)  # e.g. a reconnect: the watch starts again
        answer(h, A, health.UNIMPLEMENTED)
    assert [r.message.count("no grpc.health.v1 service") for r in caplog.records] == [1]
    assert Counter(h.picks(40)) == {A: 10, B: 10, CC: 10, D: 10}


def test_unhealthy_pods_count_towards_panic_like_ejected_ones() -> None:
    h = healthy_harness()
    for address in (A, B, CC, D):
        answer(h, address, health.SERVING)
    for address in (A, B, CC):
        answer(h, address, health.NOT_SERVING)
    assert h.balancer.panic  # 1 of 4 healthy is under the 50 % threshold
    assert set(h.picks(40)) == {A, B, CC, D}  # Envoy's panic: balance over all


def test_a_replacement_connections_health_counts_only_once_it_takes_over() -> None:
    h = healthy_harness(max_requests_per_connection=2)
    for address in (A, B, CC, D):
        answer(h, address, health.SERVING)
    h.call_on(A).release(C.OK)
    h.call_on(A).release(C.OK)  # the second call starts a replacement
    replacement = h.endpoint(A).replacement
    assert replacement is not None and replacement.health == health.PENDING
    h.balancer.health_changed(replacement, health.NOT_SERVING)
    assert h.rows()[A].state == "ready"  # the active connection still serves
