"""Per-turn seeds: stable values, binding per episode, turn index from the real conversation, delegation."""

from __future__ import annotations

from typing import Any

from mini_o3.agent import protocol
from mini_o3.agent.sample import Sample
from mini_o3.agent.policy import Generation, SamplingParams
from mini_o3.policies.seeded import SeededPolicy, turn_seed


def test_turn_seed_is_a_stable_hash_below_2_31() -> None:
    # Pinned: eval and collect runs made before SeededPolicy existed sampled with these seeds.
    assert (turn_seed(0, "small/0", 0, 0), turn_seed(0, "small/0", 0, 1), turn_seed(7, "q", 3, 2)) == (215547702, 1875189131, 1845525456)
    seeds = {turn_seed(seed, sample, run, turn) for seed in (0, 1) for sample in ("a", "b") for run in range(3) for turn in range(3)}
    assert len(seeds) == 36 and all(0 <= seed < 2**31 for seed in seeds)


class Binding:
    """A policy that binds per episode, remembers the seeds it was given and has an extra attribute."""

    def __init__(self) -> None:
        self.bound: list[tuple[str, int]] = []
        self.seeds: list[int | None] = []
        self.max_length = 123

    def bind(self, sample: Sample, run: int = 0) -> "Binding":
        self.bound.append((sample.id, run))
        return self

    def generate(self, messages: list[dict[str, Any]], sampling: SamplingParams = SamplingParams()) -> Generation:
        self.seeds.append(sampling.seed)
        return Generation("<answer>x</answer>")


def test_seeded_policy_binds_the_inner_policy_and_seeds_each_turn_by_its_index() -> None:
    inner = Binding()
    policy = SeededPolicy(inner, seed=5)
    bound = policy.bind(Sample(id="q1", image="", question="?", answer="x"), run=2)
    assert inner.bound == [("q1", 2)] and (bound.sample_id, bound.run) == ("q1", 2)
    messages = [protocol.system_message(), protocol.first_user_message("img", "?")]
    bound.generate(messages, SamplingParams(seed=999, temperature=0.5))
    messages += [protocol.assistant_message("<think>a</think>"), protocol.error_message("no action")]
    bound.generate(messages, SamplingParams())
    assert inner.seeds == [turn_seed(5, "q1", 2, 0), turn_seed(5, "q1", 2, 1)]
    policy.generate(messages[:2])  # unbound: sample "" run 0
    assert inner.seeds[-1] == turn_seed(5, "", 0, 0)
    assert bound.max_length == 123  # other attributes come from the inner policy


def test_a_policy_without_bind_is_used_as_is() -> None:
    class Plain:
        def __init__(self) -> None:
            self.seeds: list[int | None] = []

        def generate(self, messages: list[dict[str, Any]], sampling: SamplingParams = SamplingParams()) -> Generation:
            self.seeds.append(sampling.seed)
            return Generation("<answer>x</answer>")

    inner = Plain()
    SeededPolicy(inner, 0).bind(Sample(id="q", image="", question="?", answer="x")).generate([protocol.system_message()])
    assert inner.seeds == [turn_seed(0, "q", 0, 0)]
