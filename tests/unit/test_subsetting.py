"""Subsetting: stable, uncoordinated, even; and the balancer connects to the subset only."""

from __future__ import annotations

import os
from collections import Counter

import pytest

from grpclb.config.settings import Settings
from grpclb.core.subsetting import (
    Subsetter,
    deterministic_subset,
    process_seed,
    rendezvous_subset,
)
from tests.unit.test_balancer import Harness

PODS = [f"10.3.{i // 250}.{i % 250 + 1}:9000" for i in range(300)]
SEEDS = range(1, 41)  # 40 clients


def test_rendezvous_keeps_subset_size_pods_the_same_in_every_process() -> None:
    subset = rendezvous_subset(PODS, 20, seed=7)
    assert len(subset) == 20 and subset <= set(PODS)
    assert rendezvous_subset(list(reversed(PODS)), 20, seed=7) == subset  # order-free
    assert rendezvous_subset(PODS, 20, seed=8) != subset
    # Pinned: the rank is keyed blake2b, never the salted hash(), so it survives restarts.
    assert sorted(rendezvous_subset(PODS, 3, seed=7)) == [
        "10.3.0.128:9000",
        "10.3.0.172:9000",
        "10.3.0.203:9000",
    ]
    assert rendezvous_subset(PODS[:5], 20, seed=7) == set(PODS[:5])


@pytest.mark.parametrize("victim", [0, 150, 299])
def test_replacing_one_pod_changes_at_most_two_entries_in_few_clients(victim: int) -> None:
    new = "10.9.9.9:9000"
    after_pods = [*PODS[:victim], *PODS[victim + 1 :], new]
    touched = 0
    seeds = range(1, 301)
    for seed in seeds:
        before, after = rendezvous_subset(PODS, 20, seed), rendezvous_subset(after_pods, 20, seed)
        changed = len(before - after) + len(after - before)
        assert changed <= 2
        if changed:
            touched += 1
            # Only a client that held the old pod or ranks the new one changes.
            assert PODS[victim] in before or new in after
    assert touched / len(seeds) <= 0.25  # about 2 x 20 / 300 = 13 %


def test_forty_clients_spread_evenly_over_three_hundred_pods() -> None:
    counts = Counter(p for seed in SEEDS for p in rendezvous_subset(PODS, 20, seed))
    mean = 40 * 20 / 300
    assert max(counts.values()) <= 4 * mean
    assert len(counts) >= 0.85 * 300


def test_deterministic_subsets_balance_each_pod_within_one_client() -> None:
    clients = 45  # three rounds of 15 subsets of 20 over 300 pods
    counts = Counter(p for i in range(clients) for p in deterministic_subset(PODS, 20, i, seed=3))
    assert set(counts.values()) == {3} and len(counts) == 300
    # One round's subsets are disjoint and cover the fleet.
    first_round = [deterministic_subset(PODS, 20, i, seed=3) for i in range(15)]
    assert set().union(*first_round) == set(PODS)


def test_deterministic_subsets_change_at_most_two_entries_when_one_pod_is_replaced() -> None:
    after_pods = [*PODS[:40], *PODS[41:], "10.9.9.9:9000"]
    for i in range(45):
        before = deterministic_subset(PODS, 20, i, seed=3)
        after = deterministic_subset(after_pods, 20, i, seed=3)
        assert len(before - after) + len(after - before) <= 2


def test_the_process_seed_is_new_in_a_forked_child() -> None:
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        os.write(write, str(process_seed()).encode())
        os._exit(0)
    os.close(write)
    child = int(os.read(read, 64).decode())
    os.close(read)
    os.waitpid(pid, 0)
    assert child != process_seed()


def test_the_subsetter_follows_the_settings() -> None:
    assert not Subsetter(Settings()).enabled
    seeded = Subsetter(Settings.load({"subset_size": 5, "subset_seed": 9}, environ={}))
    assert seeded.choose(PODS) == rendezvous_subset(PODS, 5, 9)
    numbered = Subsetter(Settings.load({"subset_size": 5, "subset_client_index": 2}, environ={}))
    assert numbered.choose(PODS) == deterministic_subset(PODS, 5, 2, seed=0)
    assert repr(numbered) == "<Subsetter 5 pods, client 2>"


def test_the_balancer_connects_to_and_balances_over_its_subset_only() -> None:
    h = Harness(policy="round_robin", subset_size=4, subset_seed=11)
    pods = PODS[:12]
    h.resolve(*pods)
    subset = rendezvous_subset(pods, 4, 11)
    assert {c.endpoint.address for c in h.transport.opened} == subset
    h.ready(*subset)
    assert set(h.picks(40)) == subset
    stats = h.balancer.stats()
    assert {row.address for row in stats} == subset and stats.resolved_pods == 12
    # A pod outside the subset leaving changes nothing; a member leaving drains and is replaced.
    outsider = next(p for p in pods if p not in subset)
    opened = len(h.transport.opened)
    h.resolve(*[p for p in pods if p != outsider])
    assert len(h.transport.opened) == opened
    member = sorted(subset)[0]
    held = h.call_on(member)
    rest = [p for p in pods if p not in (outsider, member)]
    h.resolve(*rest)
    new_subset = rendezvous_subset(rest, 4, 11)
    assert len(new_subset - subset) == 1
    states = h.states()
    assert states[member] == "draining"  # listed while it finishes its call
    assert set(states) == new_subset | {member}
    held.release(None)
    assert set(h.states()) == new_subset
