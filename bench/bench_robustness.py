"""Figures for docs/robustness.md: parsing hostile replies, checking image headers at load, the reply fuzz.

1. Parse time of the worst replies we know (each rule's adversarial family, 240 KB and 1 MB),
   and the old parser's time on the issue's case where it is still importable (it is not: see
   the doc for the figure the issue measured, 24 s for 240 KB).
2. The cost of the header check `load_dataset` now runs per image, against a full decode, for
   an 8K JPEG (the largest benchmark images).
3. The 10,000-reply fuzz of tests/test_fuzz_episodes.py, timed, with its outcome counts.

Prints figures; asserts nothing. Run: PYTHONPATH=src .venv/bin/python bench/bench_robustness.py
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from mini_o3.agent.images import check_image_file, load_image  # noqa: E402
from mini_o3.agent.protocol import parse_action  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))


def parse_figures() -> None:
    from test_protocol import ADVERSARIAL_UNITS, WRAPPERS

    for size in (240_000, 1_000_000):
        worst, which = 0.0, ""
        total = 0.0
        for unit in ADVERSARIAL_UNITS:
            for wrapper in WRAPPERS:
                text = wrapper.format(unit * (size // len(unit)))
                started = time.perf_counter()
                parse_action(text)
                took = time.perf_counter() - started
                total += took
                if took > worst:
                    worst, which = took, f"{wrapper!r} around {unit!r}"
        count = len(ADVERSARIAL_UNITS) * len(WRAPPERS)
        print(f"parse, {count} hostile replies of {size:,} chars: worst {worst * 1000:.1f} ms ({which}), mean {total / count * 1000:.1f} ms")


def header_figures() -> None:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "8k.jpg"
        rng = np.random.default_rng(0)
        small = rng.integers(0, 255, (68, 120, 3), dtype=np.uint8)
        Image.fromarray(small).resize((7680, 4320), Image.Resampling.BICUBIC).save(path, quality=90)
        for name, call, repeats in (("header check", lambda: check_image_file(path), 200), ("full decode", lambda: load_image(path), 3)):
            started = time.perf_counter()
            for _ in range(repeats):
                call()
            print(f"{name} of an 8K JPEG ({path.stat().st_size / 1e6:.1f} MB): {(time.perf_counter() - started) / repeats * 1000:.2f} ms")


def fuzz_figures() -> None:
    import test_fuzz_episodes as fuzz

    with tempfile.TemporaryDirectory() as folder:
        started = time.perf_counter()
        fuzz.play(Path(folder), fuzz.REPLIES, fuzz.SEED)
        took = time.perf_counter() - started
        from mini_o3.agent.trajectory import read_jsonl

        loaded = list(read_jsonl(Path(folder) / "run" / "trajectories.jsonl"))
        statuses = Counter(t.status.value for t in loaded)
        turns = sum(t.num_turns for t in loaded)
        print(f"fuzz: {turns:,} replies in {len(loaded):,} episodes, {took:.1f} s, all saved; statuses {dict(statuses)}")


if __name__ == "__main__":
    parse_figures()
    header_figures()
    fuzz_figures()
