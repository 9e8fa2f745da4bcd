"""Membership changes at fleet scale cost what changed: tables off the lock, coalesced rebuilds.

The same recording transport and fake clock as test_balancer; the fleets are
big enough (hundreds of pods) to leave the at-once paths that small fleets take.
"""

from __future__ import annotations

import grpc
import pytest

from grpclb.core import snapshots
from grpclb.core.factory import INLINE_MAGLEV_PODS
from grpclb.core.hashing import hash_key
from tests.unit.test_balancer import T0, Harness

S = grpc.ChannelConnectivity
KEYS = [hash_key(f"user-{i}") for i in range(300)]
BIG = {"hash_key": "x-user", "ring_points_per_endpoint": 1024, "maglev_table_size": 65537}


def pods(n: int, first: int = 0) -> list[str]:
    return [f"10.2.{i // 250}.{i % 250 + 1}:9000" for i in range(first, first + n)]


def build_tables(h: Harness) -> int:
    """Run maintain() at the times it asks for until no table is wanted, as the background
    thread does; the passes that built a slice."""
    passes = 0
    for _ in range(10_000):
        if not h.balancer._pickers.table_wanted:
            return passes
        due = h.balancer.maintain()
        if due <= h.clock.now:
            passes += 1
        h.clock.now = max(h.clock.now, min(due, h.clock.now + 1.0))
    raise AssertionError("the table build never finished")


def owners(h: Harness) -> dict[int, str]:
    return {k: h.picks(1, k)[0] for k in KEYS}


@pytest.mark.parametrize("policy", ["ring_hash", "maglev"])
def test_a_big_fleet_builds_its_table_off_the_caller_path_in_slices(
    policy: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The pods' READY gains are coalesced; a pick rebuilds the stale snapshot once twenty
    # rebuild-times have passed, real time that a pause (a collection) during the first
    # rebuild can stretch to seconds. Here the first pick rebuilds, so the picks below
    # see every READY pod whatever the machine did.
    monkeypatch.setattr(snapshots, "_REBUILD_SPACING", 0.0)
    h = Harness(policy=policy, **BIG)
    fleet = pods(200)
    h.resolve(*fleet)
    h.ready(*fleet)
    assert h.balancer._pickers.table_wanted  # update() did not build it under the lock
    assert len(set(h.picks(400, KEYS[0]))) > 1  # meanwhile keyed calls are spread
    assert build_tables(h) > 1  # several slices, each a maintain() pass
    before = owners(h)
    assert owners(h) == before  # keys stick once the table is in
    assert len(set(before.values())) > 100


@pytest.mark.parametrize("policy", ["ring_hash", "maglev"])
def test_replacing_one_pod_keeps_it_out_of_rotation_while_the_new_table_builds(
    policy: str,
) -> None:
    h = Harness(policy=policy, **BIG)
    fleet = pods(200)
    h.resolve(*fleet)
    h.ready(*fleet)
    build_tables(h)
    before = owners(h)
    gone, (new,) = fleet[17], pods(1, first=500)
    h.resolve(*[a for a in fleet if a != gone], new)
    during = owners(h)  # the old table, the departed pod's keys fall through
    assert gone not in during.values()
    assert all(during[k] == before[k] for k in KEYS if before[k] != gone)
    h.ready(new)
    build_tables(h)
    after = owners(h)
    moved = [k for k in KEYS if after[k] != before[k]]
    # Only the departed pod's keys and the newcomer's move (Maglev: a little more).
    slack = 0 if policy == "ring_hash" else len(KEYS) // 50
    assert len([k for k in moved if before[k] != gone and after[k] != new]) <= slack


def test_a_ring_update_after_the_first_is_incremental() -> None:
    h = Harness(policy="ring_hash", **BIG)
    fleet = pods(150)
    h.resolve(*fleet)
    h.ready(*fleet)
    first_passes = build_tables(h)
    h.resolve(*fleet[1:], *pods(1, first=400))
    assert build_tables(h) < first_passes  # one patch, not the fleet's hashing and sorting


def test_pods_becoming_ready_in_a_big_fleet_coalesce_into_few_rebuilds() -> None:
    h = Harness(policy="round_robin")
    fleet = pods(1000)
    h.resolve(*fleet)
    start = h.balancer.rebuilds
    h.ready(*fleet)
    assert h.balancer.rebuilds - start <= 2  # the first READY at once, the rest marked stale
    h.balancer.maintain()  # the background pass rebuilds once for the whole batch
    assert h.balancer.rebuilds - start <= 3
    assert len(set(h.picks(1000))) == 1000


def test_a_pod_lost_leaves_rotation_at_once_even_while_the_snapshot_is_stale() -> None:
    h = Harness(policy="round_robin")
    fleet = pods(300)
    h.resolve(*fleet)
    h.ready(*fleet[:200])
    h.balancer.maintain()
    h.ready(*fleet[200:])  # stale: these join with the next rebuild
    h.set_state(fleet[5], S.TRANSIENT_FAILURE)
    picked = set(h.picks(3000))
    assert fleet[5] not in picked
    assert len(picked) >= 200


def test_a_small_fleet_still_changes_its_snapshot_and_table_at_once() -> None:
    h = Harness(policy="maglev", **BIG)
    fleet = pods(INLINE_MAGLEV_PODS)
    h.resolve(*fleet)
    assert not h.balancer._pickers.table_wanted
    h.ready(*fleet)
    assert len(set(h.picks(2000))) == len(fleet)


def test_table_builds_are_spaced_by_their_cost_so_fast_changes_coalesce() -> None:
    h = Harness(policy="maglev", **BIG)
    fleet = pods(200)
    h.resolve(*fleet)
    build_tables(h)
    next_at = h.balancer._table_next_at
    assert next_at == pytest.approx(T0 + 4.0 * h.balancer._table_spent)  # ended at T0
    h.clock.now = next_at - 0.001
    h.resolve(*fleet[1:])  # a change before the spacing ran out: its table waits its turn
    assert h.balancer.maintain() <= next_at
    assert h.balancer._pickers.table_wanted and h.balancer._table_job is None
    h.resolve(*fleet[2:])  # another change meanwhile: one build will cover both
    assert build_tables(h) >= 1
    assert not h.balancer._pickers.table_wanted
