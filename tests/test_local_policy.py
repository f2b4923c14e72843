"""LocalPolicy on the real tiny Qwen2.5-VL: prompts, generation, stops, log-probs and batching."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
import torch
from PIL import Image, ImageDraw
from transformers import GenerationConfig

from mini_o3.agent import protocol
from mini_o3.models import tiny
from mini_o3.agent.sample import Sample
from mini_o3.agent.env import Limits, ZoomEnv
from mini_o3.agent.images import ResizePolicy
from mini_o3.agent.policy import Generation, Policy, PolicyError, SamplingParams
from mini_o3.policies.local import SUPPRESSED_TOKENS, LocalPolicy, _RowStopper

SMALL_IMAGES = ResizePolicy(max_pixels=224 * 224, min_pixels=28 * 28 * 16)
GREEDY = SamplingParams(temperature=0.0, max_new_tokens=16)
ZOOM_TEXT = '<think>The sign is small.</think>\n<grounding>{"bbox_2d": [0.25, 0.25, 0.75, 0.75], "source": "original_image"}</grounding>'


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny.build_tiny(tmp_path_factory.mktemp("tiny") / "ckpt", seed=0)


@pytest.fixture(scope="module")
def policy(checkpoint: Path):
    with LocalPolicy(checkpoint, batch_wait_ms=20) as local:
        yield local


@pytest.fixture()
def png(tmp_path: Path) -> Path:
    image = Image.new("RGB", (640, 480), (240, 240, 230))
    draw = ImageDraw.Draw(image)
    draw.rectangle((300, 200, 330, 230), fill=(200, 20, 20))
    draw.text((40, 40), "STOP", fill=(0, 0, 0))
    path = tmp_path / "scene.png"
    image.save(path)
    return path


def _zoomed_env(png: Path, policy: LocalPolicy) -> ZoomEnv:
    sample = Sample(id="s1", image=png, question="What colour is the square?", answer="red")
    env = ZoomEnv(sample, Limits(max_turns=6), SMALL_IMAGES, count_tokens=policy.count_tokens)
    assert env.step(Generation(text=ZOOM_TEXT)) is False
    return env


def _conversations(count: int) -> list[list[dict]]:
    conversations = []
    for index in range(count):
        size = [(224, 224), (280, 196), (168, 336), (112, 224)][index % 4]
        image = Image.new("RGB", size, (30 * index % 255, 90, 200 - 20 * index))
        ImageDraw.Draw(image).ellipse((10, 10, 60 + 5 * index, 60), fill=(255, 255, 0))
        question = "What is the colour of the circle?" + " Look closely." * index
        conversations.append([protocol.system_message(), protocol.first_user_message(image, question)])
    return conversations


def _teacher_forced_logprobs(policy: LocalPolicy, messages: list[dict], token_ids: list[int]) -> torch.Tensor:
    prompt = policy.encode(messages)
    ids = torch.tensor([prompt.input_ids + token_ids])
    with torch.no_grad():
        logits = policy.model(
            input_ids=ids,
            pixel_values=prompt.pixel_values,
            image_grid_thw=prompt.image_grid_thw,
            mm_token_type_ids=(ids == prompt.image_token_id).long(),
        ).logits[0, len(prompt.input_ids) - 1 : -1]
    return torch.log_softmax(logits.float(), dim=-1).gather(1, torch.tensor(token_ids)[:, None])[:, 0]


def _call_at_once(policy: LocalPolicy, jobs: list[tuple[list[dict], SamplingParams]]) -> list:
    results: list = [None] * len(jobs)
    barrier = threading.Barrier(len(jobs))

    def call(index: int) -> None:
        barrier.wait()
        try:
            results[index] = policy.generate(*jobs[index])
        except PolicyError as error:
            results[index] = error

    threads = [threading.Thread(target=call, args=(index,)) for index in range(len(jobs))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    return results


def test_is_a_policy(policy: LocalPolicy) -> None:
    assert isinstance(policy, Policy)
    assert policy.count_tokens(protocol.SYSTEM_PROMPT) == len(policy.tokenizer(protocol.SYSTEM_PROMPT, add_special_tokens=False)["input_ids"])
    assert policy.image_tokens(224, 224) == 64


def test_prompt_is_the_protocol_rendering_with_expanded_image_pads(policy: LocalPolicy, png: Path) -> None:
    messages = _zoomed_env(png, policy).messages()
    prompt = policy.encode(messages)
    pad = prompt.image_token_id
    collapsed = [token for index, token in enumerate(prompt.input_ids) if token != pad or prompt.input_ids[index - 1] != pad]
    assert policy.tokenizer.decode(collapsed) == protocol.render_messages(messages)
    grid = prompt.image_grid_thw
    assert grid.shape == (2, 3)
    assert prompt.input_ids.count(pad) == int(grid.prod(dim=1).sum()) // 4
    assert prompt.pixel_values.shape[0] == int(grid.prod(dim=1).sum())
    # The Qwen processor (built by hand, no torchvision) gives the same ids.
    processor = tiny.build_processor(policy.tokenizer, policy.image_processor)
    images = [part["image"].image for message in messages for part in message["content"] if part["type"] == "image"]
    reference = processor(text=[protocol.render_messages(messages)], images=images, return_tensors="pt")
    assert reference["input_ids"][0].tolist() == prompt.input_ids
    assert reference["mm_token_type_ids"][0].tolist() == prompt.mm_token_type_ids()


def test_generates_a_turn_for_a_zoom_env_conversation(policy: LocalPolicy, png: Path) -> None:
    env = _zoomed_env(png, policy)
    messages = env.messages()
    assert sum(part["type"] == "image" for message in messages for part in message["content"]) == 2
    generation = policy.generate(messages, GREEDY)
    assert generation.prompt_tokens == len(policy.encode(messages).input_ids)
    assert generation.completion_tokens == len(generation.token_ids) == len(generation.logprobs) >= 1
    assert generation.finish_reason in ("stop", "length")
    # The `</grounding>` already in the conversation must not stop the new turn.
    assert generation.extra["stopped_by"] != "stop"
    assert all(value <= 0.0 for value in generation.logprobs)
    assert generation.latency_s > 0
    env.step(generation)
    assert env.context_tokens >= generation.prompt_tokens


def test_logprobs_are_the_raw_model_logprobs_whatever_the_sampling(checkpoint: Path) -> None:
    model, tokenizer, image_processor = tiny.load_checkpoint(checkpoint)
    # Qwen2.5-VL-7B-Instruct's own generation_config.json must not change what is sampled or scored.
    model.generation_config = GenerationConfig(
        bos_token_id=0, pad_token_id=0, eos_token_id=[1, 2], do_sample=True, repetition_penalty=1.05, temperature=0.1, top_p=0.001, top_k=1
    )
    local = LocalPolicy((model, tokenizer, image_processor))
    messages = _conversations(1)[0]
    for sampling in (GREEDY, SamplingParams(temperature=0.7, top_p=0.9, max_new_tokens=16, seed=5)):
        generation = local.generate(messages, sampling)
        expected = _teacher_forced_logprobs(local, messages, generation.token_ids)
        assert torch.allclose(torch.tensor(generation.logprobs), expected, atol=1e-4)
    local.close()


def test_seeded_sampling_is_reproducible(policy: LocalPolicy) -> None:
    messages = _conversations(1)[0]
    sampling = SamplingParams(temperature=1.0, max_new_tokens=12, seed=11)
    first, again = policy.generate(messages, sampling), policy.generate(messages, sampling)
    assert first.token_ids == again.token_ids
    other = policy.generate(messages, SamplingParams(temperature=1.0, max_new_tokens=12, seed=12))
    assert other.token_ids != first.token_ids


def test_concurrent_calls_are_batched_and_match_sequential_calls(policy: LocalPolicy) -> None:
    conversations = _conversations(8)
    samplings = [
        GREEDY if index % 2 == 0 else SamplingParams(temperature=1.0, top_p=0.95, max_new_tokens=8 + index, seed=index)
        for index in range(8)
    ]
    jobs = list(zip(conversations, samplings))
    sequential = [policy.generate(messages, sampling) for messages, sampling in jobs]
    batches_before = policy.batches_run
    concurrent = _call_at_once(policy, jobs)
    assert policy.batches_run - batches_before < 8
    assert max(generation.extra["batch_size"] for generation in concurrent) > 1
    for alone, batched in zip(sequential, concurrent):
        assert isinstance(batched, Generation)
        assert batched.token_ids == alone.token_ids
        assert batched.text == alone.text
        assert batched.finish_reason == alone.finish_reason
        assert batched.prompt_tokens == alone.prompt_tokens
        assert batched.logprobs == pytest.approx(alone.logprobs, abs=1e-4)


def test_stop_string_is_kept_and_ends_the_turn(policy: LocalPolicy) -> None:
    messages = _conversations(1)[0]
    sampling = SamplingParams(temperature=1.0, max_new_tokens=40, seed=3, stop=())
    full = policy.generate(messages, sampling)
    text = full.text
    start = next(index for index in range(len(text) // 2, len(text) - 3) if text.find(text[index : index + 3]) == index)
    stop = text[start : start + 3]
    cut = policy.generate(messages, SamplingParams(temperature=1.0, max_new_tokens=40, seed=3, stop=(stop,)))
    assert cut.finish_reason == "stop" and cut.extra["stopped_by"] == "stop"
    assert cut.text == text[: start + 3]
    assert cut.token_ids == full.token_ids[: len(cut.token_ids)]


def test_grounding_stop_is_detected_on_the_token_that_completes_it(policy: LocalPolicy) -> None:
    completion = policy.encoder.encode_text(ZOOM_TEXT + " trailing words")
    prompt = policy.encoder.encode_text("<|im_start|>assistant\n" + ZOOM_TEXT)  # an earlier stop in the prompt
    request = type("Request", (), {"sampling": SamplingParams()})()
    stopper = _RowStopper([request], len(prompt), policy.end_ids, policy.encoder.decode)
    for step in range(1, len(completion) + 1):
        done = stopper(torch.tensor([prompt + completion[:step]]), None)
        if done[0]:
            break
    assert stopper.reasons == ["stop"]
    assert policy.encoder.decode(completion[: stopper.lengths[0]]).endswith(protocol.STOP_STRING)
    assert not policy.encoder.decode(completion[: stopper.lengths[0] - 1]).endswith(protocol.STOP_STRING)


def test_never_writes_image_or_vision_tokens_even_when_the_model_prefers_them(checkpoint: Path) -> None:
    model, tokenizer, image_processor = tiny.load_checkpoint(checkpoint)
    local = LocalPolicy((model, tokenizer, image_processor))
    messages = _conversations(1)[0]
    favourite = local.generate(messages, GREEDY).token_ids[0]
    pad, video = tokenizer.convert_tokens_to_ids("<|image_pad|>"), tokenizer.convert_tokens_to_ids("<|video_pad|>")
    with torch.no_grad():  # tied weights: these rows are only ever read as output logits
        model.lm_head.weight[pad] = 50 * model.lm_head.weight[favourite]
        model.lm_head.weight[video] = 40 * model.lm_head.weight[favourite]
    prompt = local.encode(messages)
    ids = torch.tensor([prompt.input_ids])
    with torch.no_grad():
        logits = model(input_ids=ids, pixel_values=prompt.pixel_values, image_grid_thw=prompt.image_grid_thw,
                       mm_token_type_ids=(ids == pad).long()).logits[0, -1]
    assert int(logits.argmax()) == pad
    generation = local.generate(messages, SamplingParams(temperature=0.0, max_new_tokens=24))
    banned = {tokenizer.convert_tokens_to_ids(token) for token in SUPPRESSED_TOKENS}
    assert not banned & set(generation.token_ids)
    assert generation.logprobs[0] < -5  # the raw model put almost all its mass on <|image_pad|>
    sampled = local.generate(messages, SamplingParams(temperature=3.0, max_new_tokens=24, seed=0))
    assert not banned & set(sampled.token_ids)
    local.close()


@pytest.mark.parametrize("engine", ["cached", "generate"])
def test_a_failure_reaches_only_the_caller_that_caused_it(checkpoint: Path, engine: str) -> None:
    local = LocalPolicy(checkpoint, batch_wait_ms=50, engine=engine)

    def refuse(requests: list) -> None:  # a request the engine cannot serve
        if any(request.sampling.max_new_tokens == 13 for request in requests):
            raise RuntimeError("engine refused max_new_tokens=13")

    if engine == "generate":
        generate_batch = local._generate_batch
        local._generate_batch = lambda batch: (refuse(batch), generate_batch(batch))[1]
    else:
        prefill = local.cached._prefill
        local.cached._prefill = lambda joining: (refuse([request for request, _, _ in joining]), prefill(joining))[1]
    conversations = _conversations(4)
    jobs = [(conversations[index], SamplingParams(temperature=0.0, max_new_tokens=13 if index == 2 else 6)) for index in range(4)]
    results = _call_at_once(local, jobs)
    assert isinstance(results[2], PolicyError) and "max_new_tokens=13" in str(results[2])
    assert all(isinstance(results[index], Generation) for index in (0, 1, 3))
    local.close()
    with pytest.raises(PolicyError, match="closed"):
        local.generate(conversations[0], GREEDY)


def test_close_while_calls_keep_arriving_leaves_no_caller_waiting(checkpoint: Path) -> None:
    local = LocalPolicy(checkpoint, batch_wait_ms=1)
    conversation = _conversations(1)[0]
    outcomes: list[object] = []
    started = threading.Barrier(5)

    def keep_calling() -> None:
        started.wait()
        while True:
            try:
                outcomes.append(local.generate(conversation, SamplingParams(temperature=0.0, max_new_tokens=2)))
            except PolicyError as error:
                outcomes.append(error)
                return

    threads = [threading.Thread(target=keep_calling, daemon=True) for _ in range(4)]
    for thread in threads:
        thread.start()
    started.wait()
    while not any(isinstance(outcome, Generation) for outcome in outcomes):
        threading.Event().wait(0.005)
    local.close()
    for thread in threads:
        thread.join(timeout=30)
    assert not any(thread.is_alive() for thread in threads)  # before the fix one could wait forever
    errors = [outcome for outcome in outcomes if isinstance(outcome, PolicyError)]
    assert len(errors) == 4 and all("closed" in str(error) for error in errors)


def test_bad_prompts_raise_policy_errors_in_the_caller(policy: LocalPolicy) -> None:
    messages = _conversations(1)[0]
    with pytest.raises(PolicyError, match="image_pad"):
        policy.generate(messages + [protocol.error_message("literal <|image_pad|> in text")], GREEDY)
    with pytest.raises(PolicyError, match="image part"):
        policy.generate([protocol.system_message(), protocol.first_user_message(42, "?")], GREEDY)
    with pytest.raises(PolicyError, match="max_new_tokens"):
        policy.generate(messages, SamplingParams(max_new_tokens=0))


def test_bad_checkpoint_directory_is_a_clear_policy_error(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-model"
    with pytest.raises(PolicyError, match=str(missing)):
        LocalPolicy(missing)


def test_image_cache_forgets_freed_images() -> None:
    import gc

    from PIL import Image

    from mini_o3.policies.local import PromptEncoder
    from mini_o3.models.tiny import build_image_processor, build_tokenizer

    encoder = PromptEncoder(build_tokenizer(), build_image_processor())
    images = [Image.new("RGB", (56 + 28 * i, 56), (i * 20, 0, 0)) for i in range(5)]
    for image in images:
        encoder._image_features(image)
    held = encoder._cache_bytes
    assert len(encoder._cache) == 5 and held > 0
    del image, images
    gc.collect()
    encoder._image_features(Image.new("RGB", (56, 56)))
    assert len(encoder._cache) == 1 and encoder._cache_bytes < held


def _three_rounds(local: LocalPolicy, png: Path) -> tuple[list[list[dict]], list[list[Generation]]]:
    """Six conversations (four with two images) answered three times each, all at once, each turn appended with its ids."""
    conversations = [_zoomed_env(png, local).messages() for _ in range(4)] + _conversations(2)
    rounds = []
    for round_index in range(3):
        jobs = [(messages, SamplingParams(temperature=1.0, max_new_tokens=10, seed=10 * round_index + index)) for index, messages in enumerate(conversations)]
        results = _call_at_once(local, jobs)
        for messages, result in zip(conversations, results):
            messages += [protocol.assistant_message(result.text, result.token_ids), protocol.error_message("try again")]
        rounds.append(results)
    return conversations, rounds


def test_cached_engine_continues_each_conversation_and_matches_the_generate_engine(checkpoint: Path, png: Path) -> None:
    model, tokenizer, image_processor = tiny.load_checkpoint(checkpoint)
    outputs = {}
    for engine in ("generate", "cached"):
        # Three slots for six conversations: some continue their cache, others are evicted and rebuilt.
        with LocalPolicy((model, tokenizer, image_processor), max_batch_size=3, batch_wait_ms=20, engine=engine) as local:
            assert local.engine == engine
            outputs[engine] = _three_rounds(local, png)
            if engine == "cached":
                engine_stats = local.cached
                last = [_teacher_forced_logprobs(local, messages[:-2], result.token_ids) for messages, result in zip(*[outputs[engine][0], outputs[engine][1][-1]])]
    (_, generated), (conversations, cached) = outputs["generate"], outputs["cached"]
    for alone, batched in zip(sum(generated, []), sum(cached, [])):
        assert batched.token_ids == alone.token_ids
        assert batched.logprobs == pytest.approx(alone.logprobs, abs=1e-4)
    for result, expected in zip(cached[-1], last):
        assert torch.allclose(torch.tensor(result.logprobs), expected, atol=1e-4)
    assert engine_stats.reused_tokens > engine_stats.prefill_tokens  # later turns prefilled only what was new


def test_cached_engine_drops_its_cache_when_the_weights_change(checkpoint: Path) -> None:
    model, tokenizer, image_processor = tiny.load_checkpoint(checkpoint)
    with LocalPolicy((model, tokenizer, image_processor), engine="cached") as local:
        messages = _conversations(1)[0]
        first = local.generate(messages, GREEDY)
        messages += [protocol.assistant_message(first.text, first.token_ids), protocol.error_message("again")]
        with torch.no_grad():
            model.model.language_model.layers[0].mlp.down_proj.weight.mul_(1.5)  # an optimizer step, in place
        reused = local.cached.reused_tokens
        second = local.generate(messages, GREEDY)
        assert local.cached.reused_tokens == reused
        assert torch.allclose(torch.tensor(second.logprobs), _teacher_forced_logprobs(local, messages, second.token_ids), atol=1e-4)
        messages += [protocol.assistant_message(second.text, second.token_ids), protocol.error_message("again")]
        local.generate(messages, GREEDY)
        assert local.cached.reused_tokens > reused  # unchanged weights: the next turn continues the cache


def test_cached_engine_never_shares_an_image_with_other_pixels(checkpoint: Path) -> None:
    model, tokenizer, image_processor = tiny.load_checkpoint(checkpoint)
    # Same size, same question: the ids are equal, only the pixels differ.
    images = [Image.new("RGB", (224, 224), colour) for colour in ((250, 20, 20), (20, 20, 250))]
    with LocalPolicy((model, tokenizer, image_processor), engine="cached") as local:
        for image in images:
            messages = [protocol.system_message(), protocol.first_user_message(image, "What colour is it?")]
            generation = local.generate(messages, GREEDY)
            assert torch.allclose(torch.tensor(generation.logprobs), _teacher_forced_logprobs(local, messages, generation.token_ids), atol=1e-4)
        assert 0 < local.cached.reused_tokens < len(local.encode(messages).input_ids)  # the system prompt only


def test_cached_engine_shares_an_equal_image_held_in_another_object(checkpoint: Path) -> None:
    model, tokenizer, image_processor = tiny.load_checkpoint(checkpoint)
    # Two objects, one picture (a rollout reopening the question's image): the second prompt
    # continues the first one's keys through the image, by the pixels' digest, not the object.
    first, second = (Image.new("RGB", (224, 224), (250, 20, 20)) for _ in range(2))
    with LocalPolicy((model, tokenizer, image_processor), engine="cached") as local:
        prompts = [[protocol.system_message(), protocol.first_user_message(image, "What colour is it?")] for image in (first, second)]
        local.generate(prompts[0], GREEDY)
        reused = local.cached.reused_tokens
        generation = local.generate(prompts[1], GREEDY)
        encoded = local.encode(prompts[1])
        assert local.cached.reused_tokens - reused > encoded.image_spans[0][1]  # past the image's pads
        assert torch.allclose(torch.tensor(generation.logprobs), _teacher_forced_logprobs(local, prompts[1], generation.token_ids), atol=1e-4)


def test_image_keys_tell_pixels_apart_and_survive_a_new_object() -> None:
    from PIL import Image

    from mini_o3.models.tiny import build_image_processor, build_tokenizer
    from mini_o3.policies.local import PromptEncoder

    encoder = PromptEncoder(build_tokenizer(), build_image_processor())
    picture = Image.new("RGB", (56, 56), (10, 20, 30))
    changed = picture.copy()
    changed.putpixel((55, 55), (10, 20, 31))  # the last patch, one channel, one step
    keys = [encoder._image_features(image)[2] for image in (picture, picture.copy(), changed)]
    assert keys[0] == keys[1] and keys[0] != keys[2]
