"""The episode -> training contract: ids, the mask of model-written tokens, every image."""

from __future__ import annotations

from dataclasses import dataclass


import pytest
import torch
from PIL import Image

from mini_o3.agent import protocol
from mini_o3.agent.loop import EpisodeConfig, run_episode, run_episodes
from mini_o3.agent.sample import Sample
from mini_o3.agent.env import Limits
from mini_o3.agent.images import ResizePolicy
from mini_o3.agent.policy import Generation, SamplingParams
from mini_o3.policies.scripted import ScriptedPolicy, assistant_turns
from mini_o3.models.tiny import QWEN_SPECIAL_TOKENS, build_tiny, load_checkpoint
from mini_o3.train.tokenize import ConversationEncoder

SMALL = ResizePolicy(max_pixels=224 * 224, min_pixels=56 * 56)
ZOOM = "<think>Zoom in.</think>" + protocol.render_zoom(protocol.Zoom((0.1, 0.1, 0.6, 0.6)))
BAD_ZOOM = '<think>Try.</think><grounding>{"bbox_2d": [0.5, 0.5]}</grounding>'
ANSWER = "<think>Red.</think>" + protocol.render_answer("red")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple:
    folder = build_tiny(tmp_path_factory.mktemp("tiny") / "model")
    return load_checkpoint(folder)


@pytest.fixture(scope="module")
def encoder(tiny: tuple) -> ConversationEncoder:
    _, tokenizer, image_processor = tiny
    return ConversationEncoder(tokenizer, image_processor)


@pytest.fixture(scope="module")
def sample(tmp_path_factory: pytest.TempPathFactory) -> Sample:
    image = Image.new("RGB", (448, 320), (200, 200, 200))
    image.paste((220, 30, 30), (100, 90, 150, 140))
    path = tmp_path_factory.mktemp("images") / "scene.png"
    image.save(path)
    return Sample(id="s0", image=path, question="What is the colour of the square?", answer="red")


def _runs(ids: list[int], mask: list[int], value: int) -> list[list[int]]:
    runs, current = [], []
    for token, bit in zip(ids, mask):
        if bit == value:
            current.append(token)
        elif current:
            runs.append(current)
            current = []
    if current:
        runs.append(current)
    return runs


def test_sft_mask_covers_exactly_each_assistant_text_and_its_end_token(encoder: ConversationEncoder, sample: Sample) -> None:
    episode = run_episode(ScriptedPolicy([ZOOM, BAD_ZOOM, ANSWER]), sample, EpisodeConfig(resize=SMALL))
    trajectory = episode.trajectory
    assert [turn.feedback for turn in trajectory.turns] == ["observation", "error", None]
    encoded = encoder.encode_messages(trajectory.messages([view.image for view in episode.views]))

    # Token by token: the 1-runs are the three assistant texts, each closed by <|im_end|>.
    trained = [encoder.decode(run) for run in _runs(encoded.input_ids, encoded.assistant_mask, 1)]
    assert trained == [ZOOM + "<|im_end|>", BAD_ZOOM + "<|im_end|>", ANSWER + "<|im_end|>"]
    # Everything else - system prompt, question, image pads, observation and error turns - is masked.
    untrained = "".join(encoder.decode(run) for run in _runs(encoded.input_ids, encoded.assistant_mask, 0))
    assert protocol.SYSTEM_PROMPT in untrained and "here is the the zoom-in image (Observation 1)" in untrained
    assert "ERROR occurs during grounding" in untrained
    assert not any(bit for token, bit in zip(encoded.input_ids, encoded.assistant_mask) if token == encoded.image_token_id)

    # The whole sequence is the rendered conversation with each image's pads expanded.
    assert encoder.decode(encoded.input_ids) == encoder.expanded_rendering(trajectory, encoded.image_tokens)
    assert encoded.num_images == 2 and encoded.image_grid_thw.shape == (2, 3)
    assert encoded.pixel_values.shape[0] == int(encoded.image_grid_thw.prod(dim=1).sum())
    assert encoded.image_tokens == [int(row.prod()) // 4 for row in encoded.image_grid_thw]
    assert sum(encoded.mm_token_type_ids()) == sum(encoded.image_tokens)
    header = encoder.decode(encoded.input_ids[: encoded.prompt_length])
    assert header == protocol.render_messages(trajectory.messages()[:2]).replace(
        "<|image_pad|>", "<|image_pad|>" * encoded.image_tokens[0]
    )


def test_lengths_without_pixels_match_the_full_encoding(encoder: ConversationEncoder, sample: Sample) -> None:
    episode = run_episode(ScriptedPolicy([ZOOM, ANSWER]), sample, EpisodeConfig(resize=SMALL))
    messages = episode.trajectory.messages([view.image for view in episode.views])
    full = encoder.encode_messages(messages)
    light = encoder.encode_messages(messages, with_pixels=False)
    assert light.input_ids == full.input_ids and light.pixel_values is None


def test_image_count_mismatch_is_an_error(encoder: ConversationEncoder, sample: Sample) -> None:
    episode = run_episode(ScriptedPolicy([ANSWER]), sample, EpisodeConfig(resize=SMALL))
    with pytest.raises(ValueError, match="image parts"):
        encoder.encode_messages(episode.trajectory.messages(), images=[])


class CharTokenPolicy:
    """Writes scripted turns but reports odd, character-level token ids, as a sampler might.

    The ids decode to the text yet differ from what re-tokenising the text gives, so only a
    trainer that uses the sampled ids (not the text) puts these exact ids in the sequence.
    """

    def __init__(self, encoder: ConversationEncoder, script: list[str]) -> None:
        self.encoder = encoder
        self.script = script

    def generate(self, messages: list[dict], sampling: SamplingParams = SamplingParams()) -> Generation:
        text = self.script[assistant_turns(messages)]
        ids = [token for char in text for token in self.encoder.prompt_encoder.encode_text(char)]
        if not text.endswith(protocol.STOP_STRING):
            ids.append(self.encoder.im_end_id)  # the model ended its turn itself
        return Generation(text=text, token_ids=ids, prompt_tokens=10, completion_tokens=len(ids))


def test_rl_encoding_trains_on_the_sampled_ids(encoder: ConversationEncoder, sample: Sample) -> None:
    policy = CharTokenPolicy(encoder, [ZOOM, ANSWER])
    episode = run_episode(policy, sample, EpisodeConfig(resize=SMALL))
    encoded = encoder.encode_episode(episode)
    sampled = [turn.token_ids for turn in episode.trajectory.turns]
    assert sampled[0] != encoder.prompt_encoder.encode_text(ZOOM)  # really not the canonical tokens

    trained = _runs(encoded.input_ids, encoded.assistant_mask, 1)
    # The zoom stopped at </grounding>: the environment's <|im_end|> is not trained on; the answer's is.
    assert trained == [sampled[0], sampled[1]]
    assert encoder.decode(encoded.input_ids) == encoder.expanded_rendering(episode.trajectory, encoded.image_tokens)
    assert encoded.prompt_length < len(encoded.input_ids)
    assert encoded.assistant_mask[: encoded.prompt_length] == [0] * encoded.prompt_length


def test_rl_turns_without_ids_are_tokenised_from_text(encoder: ConversationEncoder, sample: Sample) -> None:
    episode = run_episode(ScriptedPolicy([ZOOM, ANSWER]), sample, EpisodeConfig(resize=SMALL))
    encoded = encoder.encode_episode(episode)
    trained = [encoder.decode(run) for run in _runs(encoded.input_ids, encoded.assistant_mask, 1)]
    assert trained == [ZOOM, ANSWER + "<|im_end|>"]
    assert encoder.decode(encoded.input_ids) == encoder.expanded_rendering(episode.trajectory, encoded.image_tokens)


def test_over_turn_rollout_keeps_its_tokens_in_the_mask(encoder: ConversationEncoder, sample: Sample) -> None:
    # Masking whole rollouts is the trainer's job (masking.rollout_weights); the encoding is plain.
    config = EpisodeConfig(limits=Limits(max_turns=2), resize=SMALL)
    episode = run_episode(ScriptedPolicy([ZOOM, ZOOM]), sample, config)
    assert episode.trajectory.status.value == "over_turn"
    encoded = encoder.encode_episode(episode)
    assert sum(encoded.assistant_mask) == 2 * len(encoder.prompt_encoder.encode_text(ZOOM))
    assert encoder.decode(encoded.input_ids) == encoder.expanded_rendering(episode.trajectory, encoded.image_tokens)


def test_local_policy_rollouts_decode_to_the_recorded_conversation(tiny: tuple, encoder: ConversationEncoder, sample: Sample) -> None:
    from mini_o3.policies.local import LocalPolicy
    from mini_o3.policies.seeded import SeededPolicy

    model, tokenizer, image_processor = tiny
    config = EpisodeConfig(limits=Limits(max_turns=3), sampling=SamplingParams(max_new_tokens=24), resize=SMALL)
    with LocalPolicy((model, tokenizer, image_processor), max_batch_size=16) as policy:
        episodes = list(run_episodes(SeededPolicy(policy, 0), [(sample, run) for run in range(16)], config, concurrency=16))
    checked = 0
    for episode in episodes:
        encoded = encoder.encode_episode(episode)
        sampled = [turn.token_ids for turn in episode.trajectory.turns]
        assert _runs(encoded.input_ids, encoded.assistant_mask, 1) == sampled
        # LocalPolicy drops special tokens a random model samples mid-text from `text`, ends a turn
        # at <|endoftext|> as at <|im_end|> (the ids keep it, the rendering closes with <|im_end|>),
        # and cuts text (not ids) at a stop string inside a token; only turns whose text is the
        # decoding of their ids, less a final <|im_end|>, can decode to the recorded conversation.
        faithful = all(
            encoder.decode(turn.token_ids[:-1] if turn.token_ids[-1] == encoder.im_end_id else turn.token_ids) == turn.text
            for turn in episode.trajectory.turns
        )
        if faithful:
            assert encoder.decode(encoded.input_ids) == encoder.expanded_rendering(episode.trajectory, encoded.image_tokens)
            checked += 1
    assert checked >= 6  # 10-16 of 16 over seeds 0-9 here


class RecordingPolicy:
    """Passes turns to a LocalPolicy and records the prompt ids each turn was sampled from."""

    def __init__(self, policy: object) -> None:
        self.policy = policy
        self.prompts: dict[int, list[list[int]]] = {}

    def bind(self, sample: Sample, run: int = 0) -> "RecordingPolicy":
        bound = RecordingPolicy(self.policy)
        bound.prompts = self.prompts
        bound.run = run
        return bound

    def generate(self, messages: list[dict], sampling: SamplingParams = SamplingParams()) -> Generation:
        self.prompts.setdefault(self.run, []).append(self.policy.encode(messages).input_ids)
        return self.policy.generate(messages, sampling)

    def __getattr__(self, name: str) -> object:
        return getattr(self.policy, name)


def _teacher_forced(model: object, encoded: object) -> torch.Tensor:
    """Log-probs of every id after the first, from one training-style forward over the whole rollout."""
    ids = torch.tensor([encoded.input_ids])
    with torch.no_grad():
        logits = model(input_ids=ids, pixel_values=encoded.pixel_values, image_grid_thw=encoded.image_grid_thw,
                       mm_token_type_ids=torch.tensor([encoded.mm_token_type_ids()])).logits[0, :-1]
    return torch.log_softmax(logits.float(), dim=-1).gather(1, ids[0, 1:, None])[:, 0]


@pytest.mark.parametrize("engine", ["cached", "generate"])
def test_every_trained_id_is_the_id_sampled_in_the_context_it_was_sampled_in(engine: str, tmp_path, encoder: ConversationEncoder, sample: Sample) -> None:
    from mini_o3.policies.local import LocalPolicy
    from mini_o3.policies.seeded import SeededPolicy

    # A random tiny model at temperature 1.5 writes special tokens mid-turn and token splits that
    # re-tokenising their text would not give; the stop string "ar" is often completed inside a
    # longer token, so the text is cut in the middle of the last sampled id. Its output row for
    # "<grounding" and ">" is tilted toward its typical hidden state, so that its turns hold
    # (malformed) groundings and the episodes go on; scripted zooms in between show more images.
    model, tokenizer, image_processor = load_checkpoint(build_tiny(tmp_path / "model", seed=3))
    _tilt(model, encoder, sample, "<grounding>", strength=10.0)
    _tilt(model, encoder, sample, " target", strength=6.0)
    _tilt(model, encoder, sample, "<|box_end|>", strength=9.0)
    sampling = SamplingParams(temperature=1.5, max_new_tokens=32, stop=(protocol.STOP_STRING, "ar"))
    config = EpisodeConfig(limits=Limits(max_turns=5, max_images=4), sampling=sampling, resize=SMALL)
    with LocalPolicy((model, tokenizer, image_processor), max_batch_size=4, engine=engine) as local:
        recording = RecordingPolicy(local)
        mixed = AlternatingPolicy(SeededPolicy(recording, 5), ScriptedPolicy([ZOOM] * 5))
        episodes = list(run_episodes(mixed, [(sample, run) for run in range(8)], config, concurrency=8))
    specials = {tokenizer.convert_tokens_to_ids(token) for token in QWEN_SPECIAL_TOKENS}
    seen = {"resplit": 0, "special mid-turn": 0, "cut mid-token": 0}
    sampled_turns = 0
    for episode in episodes:
        encoded = encoder.encode_episode(episode)
        turns = episode.trajectory.turns
        trained = _runs(encoded.input_ids, encoded.assistant_mask, 1)
        assert trained == [turn.token_ids or encoder.prompt_encoder.encode_text(turn.text) for turn in turns]
        # Each model turn was sampled from exactly the training sequence up to its first id.
        model_turns = [turn for turn in turns if turn.logprobs]
        prompts = recording.prompts[episode.run]
        assert len(prompts) == len(model_turns)
        starts = [index for index in range(1, len(encoded.input_ids)) if encoded.assistant_mask[index] and not encoded.assistant_mask[index - 1]]
        model_starts = [start for start, turn in zip(starts, turns) if turn.logprobs]
        for prompt, start in zip(prompts, model_starts):
            assert prompt == encoded.input_ids[:start]
        # ... and what it recorded at sampling is what the training forward computes.
        forced = _teacher_forced(model, encoded)
        for turn, start in zip(model_turns, model_starts):
            assert torch.allclose(torch.tensor(turn.logprobs), forced[start - 1 : start - 1 + len(turn.token_ids)], atol=1e-4)
            sampled_turns += 1
            body = turn.token_ids[:-1] if turn.token_ids[-1] in encoder.end_ids else turn.token_ids
            text = encoder.decode(body)
            seen["resplit"] += encoder.prompt_encoder.encode_text(text) != body
            seen["special mid-turn"] += any(token in specials for token in body)
            seen["cut mid-token"] += turn.finish_reason == "stop" and text != turn.text and text.startswith(turn.text)
    # The cases where re-tokenised text would have fed the model other ids than it sampled.
    assert sampled_turns >= 16 and all(count > 0 for count in seen.values()), seen
    assert max(len(episode.views) for episode in episodes) >= 3


def _tilt(model: object, encoder: ConversationEncoder, sample: Sample, text: str, strength: float) -> None:
    """Raise the logits of the tokens of `text` by about `strength` wherever the hidden state is typical."""
    episode = run_episode(ScriptedPolicy([ANSWER]), sample, EpisodeConfig(resize=SMALL))
    encoded = encoder.encode_episode(episode)
    ids = torch.tensor([encoded.input_ids])
    with torch.no_grad():
        hidden = model.model(input_ids=ids, pixel_values=encoded.pixel_values, image_grid_thw=encoded.image_grid_thw,
                             mm_token_type_ids=torch.tensor([encoded.mm_token_type_ids()])).last_hidden_state[0].mean(0)
        tokens = encoder.prompt_encoder.encode_text(text)
        model.lm_head.weight[tokens] += strength * hidden / hidden.norm() ** 2


class AlternatingPolicy:
    """The model on even turns, a script on odd ones (each episode binds both)."""

    def __init__(self, model: object, script: ScriptedPolicy) -> None:
        self.model, self.script = model, script

    def bind(self, sample: Sample, run: int = 0) -> "AlternatingPolicy":
        return AlternatingPolicy(self.model.bind(sample, run), self.script)

    def generate(self, messages: list[dict], sampling: SamplingParams = SamplingParams()) -> Generation:
        turn = assistant_turns(messages)
        if turn % 2:
            return self.script.generate(messages, sampling)
        return self.model.generate(messages, sampling)

    def __getattr__(self, name: str) -> object:
        return getattr(self.model, name)


@pytest.mark.slow
def test_the_trainer_scores_each_sampled_id_as_it_was_sampled(tmp_path, encoder: ConversationEncoder, sample: Sample) -> None:
    import json

    from mini_o3.train.config import RLJobConfig
    from mini_o3.train.rl import ROLLOUTS_FILE, build_trainer

    other = Sample(id="s1", image=sample.image, question="Which shape is red?", answer="square")
    job = RLJobConfig(
        model_path=str(build_tiny(tmp_path / "model", seed=3)), output_dir=str(tmp_path / "out"), steps=1, prompts_per_step=2,
        mini_batch_prompts=2, num_generations=4, micro_batch_size=2, max_turns=4, max_images=4, max_new_tokens=24,
        image_max_pixels=224 * 224, image_min_pixels=56 * 56, dynamic_sampling=False, save_token_ids=True,
        overturn_mask=False,  # every rollout keeps its loss mask
    )
    trainer = build_trainer(job, [sample, other])
    _tilt(trainer.model, encoder, sample, "<grounding>", strength=10.0)  # turns go on: several turns, several images
    batch = trainer._generate_and_score_completions([{"prompt": "q", "sample_index": index} for index in (0, 1) for _ in range(4)])
    trainer.close()
    records = [json.loads(line) for line in (tmp_path / "out" / ROLLOUTS_FILE).read_text().splitlines()]
    assert max(len(record["turns"]) for record in records) >= 3
    # Micro-batches of two rows, each run only as wide as its own rows (the trainer trims the step's padding).
    patches = batch["image_grid_thw"].prod(dim=1).tolist()
    for first in range(0, 8, 2):
        rows = slice(first, first + 2)
        images_before, images = sum(batch["num_images"][:first]), sum(batch["num_images"][rows])
        part = {key: value[rows] for key, value in batch.items() if torch.is_tensor(value) and value.dim() and value.shape[0] == 8}
        part["num_images"] = batch["num_images"][rows]
        part["image_grid_thw"] = batch["image_grid_thw"][images_before : images_before + images]
        start = sum(patches[:images_before])
        part["pixel_values"] = batch["pixel_values"][start : start + sum(patches[images_before : images_before + images])]
        with torch.no_grad():
            scored = trainer._logprobs(trainer.model, part)
        for row in range(2):
            recorded = [value for turn in records[first + row]["turns"] for value in turn["logprobs"]]
            assert torch.allclose(scored[row][part["loss_mask"][row] > 0], torch.tensor(recorded), atol=1e-4)


@dataclass
class Logprob:
    """vLLM's per-token log-prob record (the one field read)."""

    logprob: float


@dataclass
class Completion:
    """The fields of vLLM's CompletionOutput that a rollout turn is built from (vLLM does not run on CPU machines)."""

    token_ids: list[int]
    text: str
    logprobs: list[dict[int, Logprob]]
    finish_reason: str = "stop"


def test_vllm_turns_continue_from_the_ids_vllm_sampled(encoder: ConversationEncoder, sample: Sample) -> None:
    from mini_o3.agent.env import ZoomEnv
    from mini_o3.train.vllm_policy import generation_from_output, vllm_request

    prompt_encoder = encoder.prompt_encoder
    env = ZoomEnv(sample, Limits(max_turns=4), SMALL, prompt_encoder.count_tokens)
    box_end = prompt_encoder._backend.token_to_id("<|box_end|>")
    # vLLM's ids for a zoom: character by character (not the canonical split), a special token
    # mid-turn, and a last token that runs past the stop string (the text stops at "</grounding>").
    zoom = [token for char in ZOOM[:10] for token in prompt_encoder.encode_text(char)] + [box_end]
    zoom += prompt_encoder.encode_text(ZOOM[10:] + "\n")
    answer = [token for char in ANSWER for token in prompt_encoder.encode_text(char)] + [encoder.im_end_id]
    prompts = []
    for ids, text in ((zoom, ZOOM), (answer, ANSWER)):
        row, settings = vllm_request(prompt_encoder.encode(env.messages()), [view.image for view in env.views], SamplingParams())
        assert settings["include_stop_str_in_output"] and settings["stop"] == [protocol.STOP_STRING]
        assert len(row["multi_modal_data"]["image"] if len(env.views) > 1 else [row["multi_modal_data"]["image"]]) == len(env.views)
        prompts.append(row["prompt_token_ids"])
        output = Completion(ids, text, [{token: Logprob(-0.5)} for token in ids])
        env.step(generation_from_output(output, len(row["prompt_token_ids"]), 0.1))
    assert [turn.token_ids for turn in env.trajectory.turns] == [zoom, answer]
    assert env.trajectory.turns[1].logprobs == [-0.5] * len(answer)
    from mini_o3.agent.loop import Episode

    encoded = encoder.encode_episode(Episode(env.trajectory, env.views))
    assert _runs(encoded.input_ids, encoded.assistant_mask, 1) == [zoom, answer]
    # The second prompt is the first, the ids vLLM sampled, the closing tokens and the observation.
    assert prompts[1][: len(prompts[0]) + len(zoom)] == prompts[0] + zoom
    assert prompts[1] == encoded.input_ids[: len(prompts[1])]
    assert prompt_encoder.encode_text(encoder.decode(zoom)) != zoom  # re-tokenised text would differ


@pytest.mark.parametrize("family", ["qwen3-vl", "qwen3.5"])
def test_other_families_continue_each_turn_from_the_sampled_ids(family: str, tmp_path, sample: Sample) -> None:
    from mini_o3.models.families import backbone_of
    from mini_o3.policies.local import LocalPolicy
    from mini_o3.policies.seeded import SeededPolicy

    model, tokenizer, image_processor = load_checkpoint(build_tiny(tmp_path / "model", seed=3, family=family))
    encoder = ConversationEncoder(tokenizer, image_processor, backbone_of(model))
    _tilt(model, encoder, sample, "<grounding>", strength=10.0)  # so that turns go on (see the test above)
    sampling = SamplingParams(temperature=1.5, max_new_tokens=24, stop=(protocol.STOP_STRING, "ar"))
    config = EpisodeConfig(limits=Limits(max_turns=5, max_images=4), sampling=sampling, resize=SMALL)
    with LocalPolicy((model, tokenizer, image_processor), max_batch_size=4) as local:
        assert local.engine == "generate"  # the cached engine drives Qwen2.5-VL only
        recording = RecordingPolicy(local)
        mixed = AlternatingPolicy(SeededPolicy(recording, 5), ScriptedPolicy([ZOOM] * 5))
        episodes = list(run_episodes(mixed, [(sample, run) for run in range(4)], config, concurrency=4))
    checked = 0
    for episode in episodes:
        encoded = encoder.encode_episode(episode)
        turns = episode.trajectory.turns
        # A scripted turn's text loses the "<think>" Qwen3.5's header already wrote (Backbone.assistant_body).
        written = [turn.token_ids or encoder.prompt_encoder.encode_text(encoder.backbone.assistant_body(turn.text)) for turn in turns]
        assert _runs(encoded.input_ids, encoded.assistant_mask, 1) == written
        starts = [index for index in range(1, len(encoded.input_ids)) if encoded.assistant_mask[index] and not encoded.assistant_mask[index - 1]]
        model_starts = [start for start, turn in zip(starts, turns) if turn.logprobs]
        forced = _teacher_forced(model, encoded)
        for prompt, start, turn in zip(recording.prompts[episode.run], model_starts, [turn for turn in turns if turn.logprobs]):
            assert prompt == encoded.input_ids[:start]
            assert torch.allclose(torch.tensor(turn.logprobs), forced[start - 1 : start - 1 + len(turn.token_ids)], atol=1e-4)
            checked += 1
    assert checked >= 4 and max(len(episode.views) for episode in episodes) >= 2
