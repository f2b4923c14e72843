"""Many episodes in flight: they share their question's decoded original, and GIL waiters wake less often."""

from __future__ import annotations

import gc
import threading
import weakref
from pathlib import Path

import numpy as np
from PIL import Image

from mini_o3.agent import protocol
from mini_o3.agent.loop import SharedOriginals, run_episodes
from mini_o3.agent.sample import Sample
from mini_o3.agent.trajectory import Status
from mini_o3.policies.scripted import ScriptedPolicy


def photo(path: Path, seed: int, size: tuple[int, int] = (320, 240)) -> Sample:
    pixels = np.random.default_rng(seed).integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)
    return Sample(id=path.stem, image=path, question="What is there?", answer="x")


def test_runs_of_one_question_get_one_decoded_image_even_when_they_ask_at_once(tmp_path: Path) -> None:
    sample, other = photo(tmp_path / "a.png", 0), photo(tmp_path / "b.png", 1)
    originals = SharedOriginals()
    start = threading.Barrier(16)
    got: list[Image.Image] = []

    def ask() -> None:
        start.wait()
        image = originals.get(sample)
        got.append(image)

    threads = [threading.Thread(target=ask) for _ in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len({id(image) for image in got}) == 1
    assert got[0].size == (320, 240) and got[0].mode == "RGB"
    assert originals.get(other) is not got[0]


def test_an_original_is_dropped_when_no_episode_holds_it(tmp_path: Path) -> None:
    sample = photo(tmp_path / "a.png", 0)
    originals = SharedOriginals()
    held = weakref.ref(originals.get(sample))
    gc.collect()
    assert held() is None
    # The next episode decodes the file as it is now.
    photo(tmp_path / "a.png", 2, size=(200, 100))
    assert originals.get(sample).size == (200, 100)


def test_in_memory_images_are_not_shared() -> None:
    sample = Sample(id="mem", image=Image.new("RGB", (64, 64)), question="q", answer="a")
    assert SharedOriginals().get(sample) is None


def test_many_runs_crop_one_shared_original_at_once(tmp_path: Path) -> None:
    samples = [photo(tmp_path / f"img{i}.png", i, size=(320 + i, 240)) for i in range(3)]
    zoom = protocol.render_zoom(protocol.Zoom((0.25, 0.25, 0.75, 0.75)))
    policy = ScriptedPolicy([zoom, zoom, "<answer>x</answer>"])
    jobs = [(sample, run) for run in range(8) for sample in samples]
    episodes = list(run_episodes(policy, jobs, concurrency=24))
    assert len(episodes) == 24 and all(e.trajectory.status is Status.ANSWERED for e in episodes)
    by_sample: dict[str, set] = {}
    for episode in episodes:
        assert episode.trajectory.image_size == (320 + int(episode.trajectory.sample_id[-1]), 240)
        by_sample.setdefault(episode.trajectory.sample_id, set()).add(episode.views[1].image.tobytes())
    assert all(len(crops) == 1 for crops in by_sample.values())  # every run cut the same crop from the same pixels


class SwitchIntervalProbe:
    """Answers at once, recording the interpreter's GIL switch interval it ran under."""

    def __init__(self) -> None:
        self.seen: set[float] = set()

    def generate(self, messages, sampling):
        import sys

        from mini_o3.agent.policy import Generation

        self.seen.add(sys.getswitchinterval())
        return Generation("<answer>x</answer>")


def test_many_episodes_in_flight_slow_gil_switching_and_restore_it(tmp_path: Path) -> None:
    import sys

    from mini_o3.agent.loop import MANY_THREADS

    sample = photo(tmp_path / "a.png", 0)
    before = sys.getswitchinterval()
    many, few = SwitchIntervalProbe(), SwitchIntervalProbe()
    assert len(list(run_episodes(many, [(sample, run) for run in range(4)], concurrency=MANY_THREADS))) == 4
    assert len(list(run_episodes(few, [(sample, run) for run in range(4)], concurrency=8))) == 4
    assert [round(value, 6) for value in many.seen] == [0.05] and few.seen == {before}
    assert sys.getswitchinterval() == before
