"""Environment overhead per turn (crop, resize, encode) for 4K and 8K originals, on one core.

Target (agent issue): under 20 ms per turn for an 8K original, with the original decoded once
per episode (the decode is reported separately, per episode). Prints figures; asserts nothing.
Run: .venv/bin/python bench/bench_env.py
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from mini_o3.agent import protocol  # noqa: E402
from mini_o3.agent.sample import Sample  # noqa: E402
from mini_o3.agent.env import Limits, ZoomEnv  # noqa: E402
from mini_o3.agent.policy import Generation  # noqa: E402


def make_photo(width: int, height: int, path: Path) -> None:
    """A JPEG with photo-like detail (smooth gradients plus noise) so encoders do real work."""
    rng = np.random.default_rng(0)
    small = rng.integers(0, 255, (height // 64 + 1, width // 64 + 1, 3), dtype=np.uint8)
    base = np.asarray(Image.fromarray(small).resize((width, height), Image.Resampling.BICUBIC), dtype=np.int16)
    noise = rng.integers(-20, 20, (height, width, 1), dtype=np.int16)
    Image.fromarray(np.clip(base + noise, 0, 255).astype(np.uint8)).save(path, quality=90)


def zoom_turns(rng: np.random.Generator, turns: int) -> list[Generation]:
    out = []
    for turn in range(turns):
        side = float(rng.uniform(0.05, 0.5))
        x0, y0 = float(rng.uniform(0, 1 - side)), float(rng.uniform(0, 1 - side))
        # Every third zoom goes into the previous observation, as searches do.
        source = f"observation_{turn}" if turn and turn % 3 == 0 else "original_image"
        out.append(Generation(protocol.render_zoom(protocol.Zoom((x0, y0, x0 + side, y0 + side), source))))
    return out


def bench(label: str, width: int, height: int, episodes: int = 4, turns: int = 8) -> None:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "photo.jpg"
        make_photo(width, height, path)
        sample = Sample(id=label, image=path, question="q", answer="a")
        rng = np.random.default_rng(1)
        per_turn, per_episode_setup = [], []
        for _ in range(episodes):
            start = time.perf_counter()
            env = ZoomEnv(sample, Limits(max_turns=turns + 1))
            env.views[0].data_url()  # the first image is encoded once per episode too
            per_episode_setup.append(time.perf_counter() - start)
            for generation in zoom_turns(rng, turns):
                start = time.perf_counter()
                env.step(generation)
                env.views[-1].data_url()
                per_turn.append(time.perf_counter() - start)
        print(
            f"{label:>3} {width}x{height}: per turn (crop+resize+JPEG encode) "
            f"mean {statistics.mean(per_turn) * 1e3:6.1f} ms, p50 {statistics.median(per_turn) * 1e3:6.1f} ms, "
            f"max {max(per_turn) * 1e3:6.1f} ms | per episode (decode + first view + encode) "
            f"{statistics.mean(per_episode_setup) * 1e3:6.0f} ms"
        )


if __name__ == "__main__":

    print("mini-o3 environment overhead, one core; target: < 20 ms per turn at 8K")
    bench("4K", 3840, 2160)
    bench("8K", 7680, 4320)
