"""Synthetic probe generation speed at 4096x4096, and the measured figures of each level.

Target (data issue): at least 2 hard 4096x4096 scenes per second per core, encoding included
(JPEG quality 92, 4:4:4 chroma), and a 4,000 + 500 set built in under 30 minutes on this
2-core machine. Per core is measured as scenes per CPU-second of one process (wall time is
printed too: on a shared machine it includes waiting for the CPU). Then a 2-worker run gives
the wall-clock rate the projection uses. Last, a table of level figures from 30 problems per
level (the README's table). Prints figures; asserts nothing.
Run: .venv/bin/python bench/bench_synth.py [--per-level 30] [--scenes 12]
"""

from __future__ import annotations

import argparse
import io
import os
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

from mini_o3.data.scene import render  # noqa: E402
from mini_o3.data.synth import SynthOptions, make_problem, make_record, synthesize  # noqa: E402

SIZE = 4096
OPTIONS = SynthOptions(contact_sheet=0)


def one_core(level: str, scenes: int) -> float:
    """Scenes per CPU-second on one core, with a breakdown of where the time goes."""
    make_problem(0, 10_000, level, SIZE, OPTIONS)  # warm the font and pattern caches
    stages: dict[str, list[float]] = {"generate+check": [], "render": [], "encode": []}
    for index in range(scenes):
        start = time.process_time()
        problem, _, _, _ = make_problem(1, index, level, SIZE, OPTIONS)
        stages["generate+check"].append(time.process_time() - start)
        start = time.process_time()
        image = render(problem.scene)
        stages["render"].append(time.process_time() - start)
        start = time.process_time()
        buffer = io.BytesIO()
        image.save(buffer, format="JPEG", quality=OPTIONS.jpeg_quality, subsampling=0)
        stages["encode"].append(time.process_time() - start)
    breakdown = ", ".join(f"{name} {statistics.mean(v) * 1e3:.0f} ms" for name, v in stages.items())
    with tempfile.TemporaryDirectory() as folder:
        out = Path(folder)
        (out / "images").mkdir()
        (out / "records").mkdir()
        wall, cpu = time.perf_counter(), time.process_time()
        for index in range(scenes):
            make_record(out, index, level, SIZE, 2, OPTIONS)
        cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
        size_mb = statistics.mean(p.stat().st_size for p in (out / "images").iterdir()) / 1e6
    rate = scenes / cpu
    print(
        f"{level:>6} {SIZE}x{SIZE}, one core: {rate:.2f} scenes per CPU-second ({scenes / wall:.2f}/s wall), "
        f"{breakdown}, {size_mb:.1f} MB per JPEG"
    )
    return rate


def two_workers(level: str, scenes: int) -> float:
    """Wall-clock scenes per second with 2 worker processes (the real set-building path)."""
    with tempfile.TemporaryDirectory() as folder:
        start = time.perf_counter()
        synthesize(Path(folder) / "set", scenes, level, SIZE, 3, workers=2, progress=False, options=OPTIONS)
        seconds = time.perf_counter() - start
    rate = scenes / seconds
    print(f"{level:>6} {SIZE}x{SIZE}, synthesize(workers=2): {rate:.2f} scenes/s wall over {scenes} scenes (start-up included)")
    return rate


def level_table(per_level: int) -> None:
    print(f"\nlevel figures at {SIZE}x{SIZE}, {per_level} problems each (default options; zoom cap 2x; first view 2M pixels)")
    print("| level | target side / image side | target area / image area | near-identical distractors | objects | magnification needed | legible at first view | oracle zooms |")
    print("|---|---|---|---|---|---|---|---|")
    for level in ("easy", "medium", "hard"):
        figures = [make_problem(4, i, level, SIZE, OPTIONS)[1] for i in range(per_level)]
        side = [f.target_side_fraction * 100 for f in figures]
        area = [f.target_area_fraction * 1e4 for f in figures]
        near = [f.near_distractors for f in figures]
        magnification = [f.magnification_needed for f in figures]
        zooms = [f.zooms_needed for f in figures]
        print(
            f"| {level} | {statistics.mean(side):.2f}% ({min(side):.2f}-{max(side):.2f}) "
            f"| {statistics.mean(area):.2f}e-4 ({min(area):.2f}-{max(area):.2f}) "
            f"| {statistics.mean(near):.1f} ({min(near)}-{max(near)}) | {figures[0].objects} "
            f"| {statistics.mean(magnification):.2f} ({min(magnification):.2f}-{max(magnification):.2f}) "
            f"| {sum(f.legible_first_view for f in figures) / len(figures):.0%} "
            f"| {statistics.mean(zooms):.2f} ({min(zooms)}-{max(zooms)}) |"
        )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenes", type=int, default=12, help="scenes per speed measurement")
    parser.add_argument("--per-level", type=int, default=30, help="problems per level for the figures table")
    args = parser.parse_args()
    print(f"mini-o3 synthetic generation; target: >= 2 hard {SIZE}x{SIZE} scenes per second per core, 4,500 in < 30 min on 2 cores")
    rates = {level: one_core(level, args.scenes) for level in ("easy", "medium", "hard")}
    parallel = two_workers("hard", 2 * args.scenes)
    total = 4000 + 500
    print(
        f"projected 4,000 + 500 hard set on 2 cores: {total / (2 * rates['hard']) / 60:.1f} min from the per-core rate, "
        f"{total / parallel / 60:.1f} min from the measured 2-worker rate"
    )
    level_table(args.per_level)
