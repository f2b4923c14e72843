"""Dynamic sampling's per-slot chains: replacement at once, order and seeds independent of timing, the round limit."""

from __future__ import annotations

import random
from dataclasses import dataclass

from mini_o3.train import refill
from mini_o3.train.refill import RefillChains, run_number, run_position


@dataclass
class FakeEpisode:
    """What the chains read of an episode: its run number (and, here, the reward it scored)."""

    run: int
    reward: float


def verdict_by_question(uniform: set[int], failed: set[int] = frozenset()):
    def judge(group):
        if group.sample_index in failed:
            return refill.FAILED
        return refill.SPARE if group.sample_index in uniform else refill.KEEP
    return judge


def play(chains: RefillChains, order_seed: int) -> list[tuple[int, int]]:
    """Finish every episode the chains ask for, in a shuffled order; return every job started."""
    rng = random.Random(order_seed)
    running = list(chains.first_jobs())
    started = list(running)
    while running:
        index, run = running.pop(rng.randrange(len(running)))
        more = chains.finished(FakeEpisode(run, float(index % 2)))
        running += more
        started += more
    return started


def chains(uniform: set[int], max_rounds: int = 4, failed: set[int] = frozenset()) -> RefillChains:
    streams = [iter([10 + slot * 10 + k for k in range(20)]) for slot in range(3)]
    return RefillChains([0, 1, 2], 2, max_rounds, draw=lambda slot: next(streams[slot]),
                        score=lambda episode: episode.reward, judge=verdict_by_question(uniform, failed))


def test_run_numbers_encode_attempt_slot_and_rollout() -> None:
    assert run_number(1, 2, 1, slots=3, n=2) == 5  # the first attempt numbers runs as before: slot * n + rollout
    for attempt in (1, 2, 5):
        for slot in range(3):
            for rollout in range(2):
                assert run_position(run_number(attempt, slot, rollout, 3, 2), 3, 2) == (attempt, slot, rollout)


def test_a_rejected_group_is_replaced_when_its_last_episode_finishes() -> None:
    c = chains(uniform={1})
    jobs = c.first_jobs()
    assert [index for index, _ in jobs] == [0, 0, 1, 1, 2, 2]
    assert c.finished(FakeEpisode(jobs[2][1], 0.0)) == []  # slot 1's group is not complete yet
    follow = c.finished(FakeEpisode(jobs[3][1], 0.0))  # now it is, and uniform: slot 1 draws question 20
    assert [index for index, _ in follow] == [20, 20]
    assert [run_position(run, 3, 2)[:2] for _, run in follow] == [(2, 1), (2, 1)]
    assert c.finished(FakeEpisode(jobs[0][1], 0.0)) == [] and c.finished(FakeEpisode(jobs[1][1], 0.0)) == []
    assert 0 in c.kept  # slot 0 kept at once (the judge, not the chains, decides what is uniform)


def test_the_outcome_does_not_depend_on_which_episode_finishes_first() -> None:
    outcomes = []
    for order in range(6):
        c = chains(uniform={1, 20, 2})
        started = play(c, order)
        outcomes.append((sorted(started), {slot: group.sample_index for slot, group in c.kept.items()},
                         [group.sample_index for group in c.sampled()], c.rounds()))
    assert all(outcome == outcomes[0] for outcome in outcomes)
    assert outcomes[0][1] == {0: 0, 1: 21, 2: 30}
    assert outcomes[0][2] == [0, 1, 2, 20, 30, 21]  # by attempt, then slot
    assert outcomes[0][3] == 3


def test_a_slot_gives_up_after_max_rounds_and_keeps_its_rejected_groups() -> None:
    c = chains(uniform=set(), max_rounds=2, failed={2, 30})
    play(c, 0)
    assert sorted(c.kept) == [0, 1] and c.attempts[2] == 2
    assert [(place, verdict, group.sample_index) for place, (verdict, group) in sorted(c.rejected.items())] == [
        ((1, 2), refill.FAILED, 2), ((2, 2), refill.FAILED, 30)]
