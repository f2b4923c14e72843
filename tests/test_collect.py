"""Cold-start collection: oracle end to end, filters, in-context exemplars, resume, SFT files, the tiny model."""

from __future__ import annotations

import ast
import json
import threading
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from PIL import Image, ImageDraw

from mini_o3.agent import protocol
from mini_o3.agent.loop import EpisodeConfig, run_episode
from mini_o3.coldstart.collect import CollectConfig, CollectDirError, collect, round_dir, select_trajectories
from mini_o3.agent.sample import Sample
from mini_o3.data.synth import SynthOptions, load_synthetic, synthesize
from mini_o3.coldstart.exemplars import (
    EXEMPLAR_INTRO,
    EXEMPLAR_SEPARATOR,
    ExemplarPolicy,
    builtin_exemplar_dir,
    check_exemplar,
    classify_patterns,
    load_exemplars,
)
from mini_o3.agent.env import Limits
from mini_o3.agent.policy import Generation, PolicyError, SamplingParams
from mini_o3.coldstart.oracle import OraclePolicy
from mini_o3.policies.scripted import ScriptedPolicy
from mini_o3.policies.seeded import turn_seed
from mini_o3.coldstart.sft_files import (
    IMAGE_TOKEN,
    conversation_from_row,
    load_coldstart_parquet,
    load_sft_dataset,
    read_sft_rows,
    sharegpt_conversation,
)
from mini_o3.agent.store import TrajectoryStore
from mini_o3.agent.trajectory import Status, read_jsonl

SMALL = dict(max_pixels=224 * 224, min_pixels=28 * 28 * 16)
ZOOM = protocol.render_zoom(protocol.Zoom((0.25, 0.25, 0.75, 0.75)))


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory: pytest.TempPathFactory) -> list[Sample]:
    root = tmp_path_factory.mktemp("synth")
    options = SynthOptions(contact_sheet=0)
    synthesize(root / "easy", 6, "easy", 768, seed=9, progress=False, options=options)
    synthesize(root / "grid", 3, "grid", 336, seed=9, progress=False, options=options)
    return load_synthetic(root / "easy") + load_synthetic(root / "grid")


@pytest.fixture(scope="module")
def small_samples(tmp_path_factory: pytest.TempPathFactory) -> list[Sample]:
    root = tmp_path_factory.mktemp("small")
    samples = []
    for index in range(4):
        image = Image.new("RGB", (320, 240), (235, 235, 225))
        ImageDraw.Draw(image).rectangle((40 + 50 * index, 60, 70 + 50 * index, 90), fill=(200, 20, 20))
        path = root / f"s{index}.png"
        image.save(path)
        samples.append(
            Sample(id=f"small/{index}", image=path, question="What colour is the square?", answer="red", boxes=[(40 + 50 * index, 60, 71 + 50 * index, 91)])
        )
    return samples


def _config(tmp_path: Path, **fields: Any) -> CollectConfig:
    return CollectConfig(**{"out": str(tmp_path / "out"), "progress": False, "concurrency": 4, **fields})


# ---------------------------------------------------------------- the oracle, end to end


def test_collect_with_the_oracle_end_to_end(tmp_path: Path, synthetic: list[Sample]) -> None:
    config = _config(tmp_path, policy="oracle", per_question=2, rounds=2, max_one_turn_share=0.1)
    report = collect(config, samples=synthetic)
    stats = json.loads((tmp_path / "out" / "stats.json").read_text())
    assert report.ran == report.episodes == stats["episodes"] and not report.stopped
    assert stats["questions"] == len(synthetic) and stats["questions_with_trajectories"] == len(synthetic)
    # The grid scan is the same every run, so its second trajectory is a duplicate in every round.
    assert stats["rejected"].get("duplicate", 0) >= 3
    assert stats["trajectories"] == report.accepted == report.sft.rows
    rounds = stats["rounds"]
    assert [entry["round"] for entry in rounds] == [0, 1]
    assert rounds[0]["episodes"] == 2 * len(synthetic) and rounds[1]["questions"] < len(synthetic)
    assert sum(rounds[i]["accepted"] for i in range(2)) == report.accepted
    assert sum(stats["turns_histogram"].values()) == report.accepted
    assert set(stats["patterns"]) == {"direct", "depth_first", "trial_and_error", "goal_maintenance"}
    assert sum(stats["oracle_patterns"].values()) == report.accepted
    assert stats["patterns"]["depth_first"] > 0 and stats["patterns"]["trial_and_error"] > 0
    accepted = list(read_jsonl(tmp_path / "out" / "accepted.jsonl"))
    assert len(accepted) == report.accepted
    assert all(t.status is Status.ANSWERED for t in accepted)
    one_turn = sum(1 for t in accepted if t.num_turns == 1)
    assert one_turn <= int(0.1 * len(synthetic) * 2)
    assert f"{report.accepted} trajectories kept" in report.summary()


def test_sft_dataset_is_written_in_both_forms_and_reloads(tmp_path: Path, synthetic: list[Sample]) -> None:
    report = collect(_config(tmp_path, policy="oracle", per_question=1), samples=synthetic[:4])
    sft_dir = tmp_path / "out" / "sft"
    accepted = {(t.sample_id, t.meta["run"]): t for t in read_jsonl(tmp_path / "out" / "accepted.jsonl")}
    rows = list(read_sft_rows(sft_dir))
    assert len(rows) == report.accepted == len(accepted)
    for row in rows:
        trajectory = accepted[(row["sample_id"], row["run"])]
        assert row["messages"] == json.loads(json.dumps(trajectory.messages(row["images"])))
        assert row["messages"][0]["content"][0]["text"] == protocol.SYSTEM_PROMPT
        assert [m["role"] for m in row["messages"][1:]] == ["user", "assistant"] * trajectory.num_turns
        assert len(row["images"]) == len(trajectory.views)
        for path, view in zip(row["images"], trajectory.views):
            with Image.open(path) as image:
                assert image.size == view.size
    dataset = load_sft_dataset(sft_dir)
    assert len(dataset) == len(rows) and set(dataset.column_names) >= {"messages", "images"}
    opened = load_sft_dataset(sft_dir, images="pil")[0]
    assert isinstance(opened["images"][0], Image.Image)

    parquet = load_coldstart_parquet(sft_dir)
    assert parquet.column_names == ["images", "image_names", "conversations", "data_source", "sample_index", "rollout_index"]
    index_of = {sample.id: index for index, sample in enumerate(synthetic[:4])}
    by_index = {(index_of[t.sample_id], t.meta["run"]): t for t in accepted.values()}
    for row in parquet:
        trajectory = by_index[(row["sample_index"], row["rollout_index"])]
        conversation = conversation_from_row(row)
        assert conversation == ast.literal_eval(row["conversations"])  # their preprocess script eval()s it
        assert conversation == sharegpt_conversation(trajectory)
        assert [turn["from"] for turn in conversation[:3]] == ["system", "human", "gpt"]
        assert conversation[1]["value"] == IMAGE_TOKEN + "\n" + trajectory.question
        assert sum(turn["value"].count(IMAGE_TOKEN) for turn in conversation) == len(row["images"]) == len(row["image_names"])
        assert row["image_names"][0] == "original_image.jpg"
        assert row["data_source"].startswith("synthetic_")
        assert isinstance(row["images"][0], Image.Image) and row["images"][0].size == trajectory.views[0].size
    text = (sft_dir / "messages.jsonl").read_text()
    assert '"type": "image", "image": "images/' in text  # relative paths on disk


# ---------------------------------------------------------------- filters


def _trajectory(sample: Sample, turns: list[str], run: int = 0, round_: int = 0, limits: Limits = Limits(max_turns=4)):
    trajectory = run_episode(ScriptedPolicy(turns), sample, EpisodeConfig(limits=limits), run=run).trajectory
    trajectory.meta["round"] = round_
    return trajectory


def test_selection_keeps_only_correct_well_formed_capped_unique_trajectories(small_samples: list[Sample]) -> None:
    a, b, c, d = small_samples
    good = f"<think>look</think>{ZOOM}"
    answer = "<think>it is red</think><answer>red</answer>"
    trajectories = [
        _trajectory(a, [good, answer], run=0),
        _trajectory(a, [good, answer], run=1),  # the same actions again: duplicate
        _trajectory(a, [good, "<think>closer</think>" + protocol.render_zoom(protocol.Zoom((0.1, 0.1, 0.4, 0.4), "observation_1")), answer], run=2),
        _trajectory(a, [f"<think>x</think>{protocol.render_zoom(protocol.Zoom((0.0, 0.0, 0.5, 0.5)))}", answer], run=3),  # over the cap of 2
        _trajectory(b, ["<think>hmm</think><grounding>{bad json}</grounding>", good, answer], run=0),  # malformed turn
        _trajectory(b, [good, "<think>it is blue</think><answer>blue</answer>"], run=1),  # wrong
        _trajectory(b, [ZOOM, answer], run=2),  # no thought before the action
        _trajectory(c, [good, good, good, good], run=0),  # over_turn
        _trajectory(c, ["<think>I give up</think>"], run=1),  # no answer
        _trajectory(c, [answer], run=2),  # one turn: within the cap
        _trajectory(d, ["<think>red, obviously</think><answer>red</answer>"], run=0),  # one turn: over the cap
        _trajectory(d, ["<think>red, obviously</think><answer>The answer is red.</answer>"], run=1, round_=1),
    ]
    selection = select_trajectories(reversed(trajectories), per_question=2, one_turn_limit=1)
    verdicts = {key: verdict for key, verdict in selection.verdicts.items()}
    assert verdicts == {
        ("small/0", 0): "accepted",
        ("small/0", 1): "duplicate",
        ("small/0", 2): "accepted",
        ("small/0", 3): "over_cap",
        ("small/1", 0): "format_error",
        ("small/1", 1): "wrong",
        ("small/1", 2): "format_error",
        ("small/2", 0): "over_turn",
        ("small/2", 1): "no_answer",
        ("small/2", 2): "accepted",
        ("small/3", 0): "one_turn_cap",
        ("small/3", 1): "one_turn_cap",
    }
    assert [(t.sample_id, t.meta["run"]) for t in selection.accepted] == [("small/0", 0), ("small/0", 2), ("small/2", 2)]
    # With room for more one-turn trajectories, a different answer text is not a duplicate.
    again = select_trajectories(trajectories, per_question=2, one_turn_limit=5)
    assert again.verdicts[("small/3", 0)] == again.verdicts[("small/3", 1)] == "accepted"


def test_pattern_classifier_on_hand_written_trajectories(small_samples: list[Sample]) -> None:
    sample = small_samples[0]
    answer = "<think>red</think><answer>red</answer>"
    nested = protocol.render_zoom(protocol.Zoom((0.1, 0.1, 0.6, 0.6), "observation_1"))
    back = protocol.render_zoom(protocol.Zoom((0.5, 0.5, 1.0, 1.0)))
    assert classify_patterns(_trajectory(sample, [answer])) == ["direct"]
    assert classify_patterns(_trajectory(sample, [f"<think>a</think>{ZOOM}", f"<think>b</think>{nested}", answer])) == ["depth_first"]
    assert classify_patterns(_trajectory(sample, [f"<think>a</think>{ZOOM}", f"<think>Not here. Back.</think>{back}", answer])) == ["trial_and_error"]
    restating = _trajectory(sample, [f"<think>a</think>{ZOOM}", f"<think>I'm still looking for the red square.</think>{back}", answer])
    assert classify_patterns(restating) == ["trial_and_error", "goal_maintenance"]


# ---------------------------------------------------------------- exemplars


def test_builtin_exemplars_are_valid_small_and_cover_the_three_patterns() -> None:
    exemplars = load_exemplars()
    assert len(exemplars) >= 6
    for exemplar in exemplars:
        assert check_exemplar(exemplar) == [], exemplar.id
    shown = {name for exemplar in exemplars for name in exemplar.patterns}
    assert {"depth_first", "trial_and_error", "goal_maintenance"} <= shown
    assert max(len(exemplar.turns) for exemplar in exemplars) >= 6
    assert sum(path.stat().st_size for path in builtin_exemplar_dir().iterdir()) < 2_000_000


class Recorder:
    """A real policy that remembers every prompt; answers 'red' after one zoom, or wrongly when told to."""

    def __init__(self, wrong_runs: int = 0) -> None:
        self.prompts: list[list[dict[str, Any]]] = []
        self.binds: list[tuple[str, int]] = []
        self.seeds: dict[tuple[str, int, int], int | None] = {}
        """(sample id, run, turn) -> the sampling seed of that turn."""
        self.wrong_runs = wrong_runs
        self.lock = threading.Lock()

    def bind(self, sample: Sample, run: int = 0) -> "Recorder._Bound":
        with self.lock:
            self.binds.append((sample.id, run))
        return Recorder._Bound(self, sample.id, run)

    class _Bound:
        def __init__(self, recorder: "Recorder", sample_id: str, run: int) -> None:
            self.recorder, self.sample_id, self.run = recorder, sample_id, run

        def generate(self, messages: list[dict[str, Any]], sampling: SamplingParams = SamplingParams()) -> Generation:
            observed = any("After the above Action" in str(part.get("text", "")) for part in messages[-1]["content"])
            with self.recorder.lock:
                self.recorder.prompts.append(messages)
                self.recorder.seeds[(self.sample_id, self.run, int(observed))] = sampling.seed
            if not observed:
                return Generation(f"<think>Let me zoom in.</think>{ZOOM}")
            colour = "blue" if self.run < self.recorder.wrong_runs else "red"
            return Generation(f"<think>I can see it now.</think><answer>{colour}</answer>")


def test_exemplars_are_prepended_in_the_prompt_but_never_saved(tmp_path: Path, small_samples: list[Sample]) -> None:
    recorder = Recorder()
    config = _config(tmp_path, policy="api", exemplars_per_prompt=2, **SMALL)
    report = collect(config, policy=recorder, samples=small_samples[:2])
    assert report.accepted == 2
    prompt = recorder.prompts[0]
    assert prompt[0]["content"][0]["text"] == protocol.SYSTEM_PROMPT
    intros = [i for i, m in enumerate(prompt) if m["role"] == "user" and m["content"][0].get("text") == EXEMPLAR_INTRO]
    assert len(intros) == 2 and intros[0] == 1
    separator = [i for i, m in enumerate(prompt) if m["content"][0].get("text") == EXEMPLAR_SEPARATOR]
    assert len(separator) == 1 and separator[0] == len(prompt) - 1
    exemplar_images = [part for m in prompt[1 : separator[0]] for part in m["content"] if part["type"] == "image"]
    assert len(exemplar_images) >= 4  # every exemplar brings its original and its crops
    assert max(part["image"].image.width * part["image"].image.height for part in exemplar_images) <= 224 * 224
    assert sum(1 for m in prompt[1 : separator[0]] if m["role"] == "assistant") >= 4
    for trajectory in TrajectoryStore(round_dir(tmp_path / "out", 0)).load():
        messages = trajectory.messages()
        assert len(messages) == 2 + 2 * trajectory.num_turns - 1
        assert all(EXEMPLAR_INTRO not in json.dumps(m) and EXEMPLAR_SEPARATOR not in json.dumps(m) for m in messages)
    row = next(read_sft_rows(tmp_path / "out" / "sft"))
    assert all(EXEMPLAR_SEPARATOR not in json.dumps(m) for m in row["messages"])


def test_every_turn_samples_with_its_turn_seed_and_exemplar_turns_do_not_count(tmp_path: Path, small_samples: list[Sample]) -> None:
    recorder = Recorder()
    collect(_config(tmp_path, policy="api", exemplars_per_prompt=2, seed=3, **SMALL), policy=recorder, samples=small_samples[:2])
    # The same seeds as before SeededPolicy: turn = assistant turns of the real conversation (0 zoom, 1 answer).
    expected = {(s.id, 0, turn): turn_seed(3, s.id, 0, turn) for s in small_samples[:2] for turn in (0, 1)}
    assert recorder.seeds == expected and len(set(expected.values())) == 4


def test_exemplar_policy_never_shows_a_question_its_own_trajectory(small_samples: list[Sample]) -> None:
    exemplars = load_exemplars()
    own = replace(exemplars[0].sample)
    chosen = ExemplarPolicy(ScriptedPolicy(["<answer>x</answer>"]), exemplars, per_prompt=len(exemplars)).bind(own).exemplar_ids
    assert exemplars[0].id not in chosen and len(chosen) == len(exemplars) - 1
    first = ExemplarPolicy(ScriptedPolicy(["<answer>x</answer>"]), exemplars, per_prompt=2, seed=0)
    assert first.bind(small_samples[0], 0).exemplar_ids == first.bind(small_samples[0], 0).exemplar_ids


def test_rounds_retry_questions_lacking_trajectories_and_grow_the_pool(tmp_path: Path, small_samples: list[Sample]) -> None:
    recorder = Recorder(wrong_runs=1)  # run 0 (round 0) answers wrongly, later runs answer right
    config = _config(
        tmp_path, policy="api", rounds=3, exemplars_per_prompt=1, add_accepted_to_exemplars=True, exemplars_added_per_round=1, **SMALL
    )
    report = collect(config, policy=recorder, samples=small_samples)
    rounds = report.stats["rounds"]
    assert [r["episodes"] for r in rounds] == [4, 4, 0]
    assert rounds[0]["accepted"] == 0 and rounds[0]["rejected"] == {"wrong": 4}
    assert rounds[1]["accepted"] == 4 and rounds[1]["acceptance_rate"] == 1.0
    pool = json.loads((tmp_path / "out" / "exemplar_pool.json").read_text())
    builtin = len(load_exemplars())
    assert [len(entry["exemplars"]) for entry in pool] == [builtin, builtin, builtin + 1]
    assert sorted(recorder.binds) == sorted([(s.id, 0) for s in small_samples] + [(s.id, 1) for s in small_samples])


# ---------------------------------------------------------------- resume


class Interrupting:
    """Wraps the oracle; sets `stop` once `after` episodes have started, and counts every episode."""

    def __init__(self, oracle: OraclePolicy, stop: threading.Event | None, after: int) -> None:
        self.oracle, self.stop, self.after = oracle, stop, after
        self.started: list[tuple[str, int]] = []
        self.lock = threading.Lock()

    def bind(self, sample: Sample, run: int = 0):
        with self.lock:
            self.started.append((sample.id, run))
            if self.stop is not None and len(self.started) >= self.after:
                self.stop.set()
        return self.oracle.bind(sample, run=run)


def test_resume_after_interruption_redoes_nothing(tmp_path: Path, synthetic: list[Sample]) -> None:
    samples = synthetic[:6]
    oracle_config = dict(policy="oracle", per_question=2, rounds=2, concurrency=2, exemplars_per_prompt=0)
    stop = threading.Event()
    first = Interrupting(OraclePolicy(seed=0, max_turns=16), stop, after=5)
    interrupted = collect(_config(tmp_path, **oracle_config), policy=first, samples=samples, stop=stop)
    assert interrupted.stopped and interrupted.sft is None and 5 <= interrupted.ran < 12
    # A torn last line (a crash mid-write) is cut off, and that episode is run again.
    store_path = round_dir(tmp_path / "out", 0) / "trajectories.jsonl"
    lines = store_path.read_text().splitlines(keepends=True)
    store_path.write_text("".join(lines[:-1]) + lines[-1][: len(lines[-1]) // 2])
    kept = {(t.sample_id, t.meta["run"]) for t in read_jsonl(store_path)}
    assert len(kept) == len(lines) - 1
    second = Interrupting(OraclePolicy(seed=0, max_turns=16), None, after=0)
    resumed = collect(_config(tmp_path, **oracle_config), policy=second, samples=samples)
    assert not kept & set(second.started)
    assert len(set(second.started)) == len(second.started)
    assert resumed.resumed == len(lines) - 1 and resumed.ran == len(second.started)
    again = Interrupting(OraclePolicy(seed=0, max_turns=16), None, after=0)
    rerun = collect(_config(tmp_path, **oracle_config), policy=again, samples=samples)
    assert again.started == [] and rerun.ran == 0

    whole = collect(_config(tmp_path / "whole", **oracle_config), policy=OraclePolicy(seed=0, max_turns=16), samples=samples)
    assert whole.accepted == resumed.accepted and whole.episodes == resumed.episodes
    texts = lambda path: sorted((t.sample_id, t.meta["run"], tuple(x.text for x in t.turns)) for t in read_jsonl(path))
    assert texts(tmp_path / "out" / "accepted.jsonl") == texts(tmp_path / "whole" / "out" / "accepted.jsonl")


def test_resume_refuses_other_settings_and_names_them(tmp_path: Path, small_samples: list[Sample]) -> None:
    settings = dict(policy="api", exemplars_per_prompt=0, **SMALL)
    collect(_config(tmp_path, **settings), policy=Recorder(), samples=small_samples[:2])
    for changed, shown in (({"seed": 1}, "seed: 0 there, 1 now"), ({"max_turns": 4, "temperature": 0.5}, "max_turns: 16 there, 4 now; temperature")):
        with pytest.raises(CollectDirError, match=f"{shown}.*same settings to resume it, or use another --out"):
            collect(_config(tmp_path, **{**settings, **changed}), policy=Recorder(), samples=small_samples[:2])
    # What is not part of what an episode means may change: more rounds, a limit, the concurrency.
    again = collect(_config(tmp_path, **settings, rounds=2, limit=1, concurrency=1), policy=Recorder(), samples=small_samples[:2])
    assert again.ran == 0 and again.accepted == 1
    assert json.loads((tmp_path / "out" / "config.json").read_text())["rounds"] == 2
    (tmp_path / "out" / "config.json").write_text("{not json")
    with pytest.raises(CollectDirError, match="cannot read .*config.json.*another --out"):
        collect(_config(tmp_path, **settings), policy=Recorder(), samples=small_samples[:2])


def test_error_episodes_run_again_on_resume(tmp_path: Path, small_samples: list[Sample]) -> None:
    def server_down(messages: list[dict[str, Any]]) -> str:
        raise PolicyError("cannot reach http://127.0.0.1:1/v1 (connection refused)")

    settings = dict(policy="api", exemplars_per_prompt=0, **SMALL)
    down = collect(_config(tmp_path, **settings), policy=ScriptedPolicy(server_down), samples=small_samples[:3])
    assert down.accepted == 0 and down.stats["rounds"][0]["rejected"] == {"error": 3}
    recorder = Recorder()
    up = collect(_config(tmp_path, **settings), policy=recorder, samples=small_samples[:3])
    assert (up.ran, up.resumed, up.accepted, up.episodes) == (3, 0, 3, 3)  # the last line of a key wins
    assert sorted(recorder.binds) == [(s.id, 0) for s in small_samples[:3]]
    assert up.stats["rounds"][0]["statuses"] == {"answered": 3}
    done = collect(_config(tmp_path, **settings), policy=Recorder(), samples=small_samples[:3])
    assert (done.ran, done.resumed, done.accepted) == (0, 3, 3)


def test_config_validation_names_the_field() -> None:
    with pytest.raises(ValueError, match="policy"):
        CollectConfig(policy="gpt")
    with pytest.raises(ValueError, match="per_question"):
        CollectConfig(per_question=0)
    with pytest.raises(ValueError, match="max_one_turn_share"):
        CollectConfig(max_one_turn_share=2)
    assert CollectConfig.from_dict(CollectConfig(rounds=3).to_dict()).rounds == 3


# ---------------------------------------------------------------- the tiny model (slow)


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from mini_o3.models import tiny

    return tiny.build_tiny(tmp_path_factory.mktemp("tiny") / "ckpt", seed=0)


def _tiny_config(tmp_path: Path, policy: str, **fields: Any) -> CollectConfig:
    return _config(
        tmp_path, policy=policy, max_turns=2, max_new_tokens=24, exemplars_per_prompt=1, rounds=2, concurrency=4, **SMALL, **fields
    )


def _check_failures_counted(report, samples: list[Sample]) -> None:
    stats = report.stats
    assert stats["episodes"] == report.episodes >= len(samples)
    rejected = sum(stats["rejected"].values())
    assert rejected + report.accepted == report.episodes
    for entry in stats["rounds"]:
        assert sum(entry["rejected"].values()) + entry["accepted"] == entry["episodes"]
    assert report.sft is not None and report.sft.rows == report.accepted
    # The model was really asked: episodes ran turns (a random model's turns are mostly rejected).
    stored = [t for number in range(len(stats["rounds"])) for t in TrajectoryStore(round_dir(report.out, number)).load()]
    assert sum(t.num_turns for t in stored) >= len(samples)
    assert sum(1 for t in stored if t.status is Status.ERROR) == 0


@pytest.mark.slow
def test_collect_with_the_tiny_model_over_http(tmp_path: Path, tiny_checkpoint: Path, small_samples: list[Sample]) -> None:
    from mini_o3.policies.http import HttpPolicy
    from mini_o3.policies.local import LocalPolicy
    from mini_o3.serve import start_server

    with LocalPolicy(tiny_checkpoint) as local:
        server, url = start_server(local)
        try:
            client = HttpPolicy(url, model="mini-o3", max_retries=0)
            config = _tiny_config(tmp_path, "api", api=url, model="mini-o3")
            report = collect(config, policy=client, samples=small_samples)
        finally:
            server.stop()
    _check_failures_counted(report, small_samples)
    assert report.stats["rounds"][0]["episodes"] == len(small_samples)


@pytest.mark.slow
def test_collect_with_the_tiny_model_locally(tmp_path: Path, tiny_checkpoint: Path, small_samples: list[Sample]) -> None:
    config = _tiny_config(tmp_path, "local", model_path=str(tiny_checkpoint), temperature=1.0)
    report = collect(config, samples=small_samples)  # the config builds the LocalPolicy
    _check_failures_counted(report, small_samples)
    statuses = report.stats["rounds"][0]["statuses"]
    assert sum(statuses.values()) == len(small_samples)


def test_a_rerun_removes_the_temporaries_a_killed_run_left(tmp_path: Path, small_samples: list[Sample]) -> None:
    config = _config(tmp_path, policy="oracle", exemplars_per_prompt=0)
    collect(config, samples=small_samples)
    out = tmp_path / "out"
    # What `mini-o3 collect` killed while writing its files leaves behind (seen: 1.2 MB each).
    left = [
        out / f".accepted.jsonl.{'a' * 32}.tmp",
        out / "sft" / f".messages.jsonl.{'0123456789abcdef' * 2}.tmp",
        out / "sft" / "coldstart" / ".shard-00007.parquet.tmp",
    ]
    for path in left:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x" * 1000)
    foreign = [out / "notes.tmp", out / "sft" / ".messages.jsonl.tmp"]  # not names our writers use: left alone
    for path in foreign:
        path.write_text("mine")
    collect(config, samples=small_samples)
    assert [path for path in left if path.exists()] == []
    assert all(path.exists() for path in foreign)
