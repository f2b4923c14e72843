"""Eval throughput, client CPU and memory against local servers with a fixed delay per request.

Server processes (`mini_o3.serve` around a ScriptedPolicy that zooms `--zooms` times, then
answers) sleep a fixed L seconds per chat request; `--endpoints N` starts N of them and the
policy balances over them. This process runs `run_eval` through `HttpPolicy` with C episodes in
flight, for each C in `--concurrency`, and prints:

- throughput: assistant turns per second of the episode phase, against the ideal C / L
  (target: at least 0.9 x C / L);
- client CPU per turn: this process's CPU time (user + system, every thread) over the whole
  `run_eval` call (data loading, episodes, writing trajectories and views, scoring, metrics)
  divided by the turns (targets: under 10 ms excluding image encoding; under 2 ms at 1,024 and
  2,048 in flight);
- memory per episode in flight: the growth of this process's resident memory during the run
  (its peak, sampled every 20 ms) divided by C.

Old and new in one run: `--baseline REF` also runs the HttpPolicy of git revision REF (default
fab8e62, the last one written over http.client) on the same data, alternating with the current
one at each C.

Image encoding is kept out by construction and then measured: the originals are 64x64 and
every image shown is at most 64x64 pixels, so each JPEG encode is tiny; the encodes a turn
costs (one data-URL encode for the request, one JPEG save for views/) are timed separately on
the same images and subtracted, and both figures are printed.

Run: .venv/bin/python bench/bench_eval.py [--delay 1.0] [--concurrency 16 64 256] [--endpoints 1] [--waves 3] [--baseline REF] [--dir DIR]
Scale: .venv/bin/python bench/bench_eval.py --endpoints 4 --concurrency 1024 2048 --delay 8 --waves 2 --baseline none
"""

from __future__ import annotations

import argparse
import io
import json
import os
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from rich.console import Console

from mini_o3.agent import protocol
from mini_o3.eval.runner import EvalConfig, run_eval
from mini_o3.agent.images import data_url
from mini_o3.policies.http import HttpPolicy

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_http import BASELINE, RssPeak, load_baseline  # noqa: E402 - a sibling script

SERVER = textwrap.dedent(
    """
    import sys, time
    from mini_o3.policies.scripted import ScriptedPolicy
    from mini_o3.serve import start_server
    zooms, delay = int(sys.argv[1]), float(sys.argv[2])
    zoom = sys.argv[3]
    policy = ScriptedPolicy([zoom] * zooms + ["<think>Found it.</think><answer>red</answer>"])
    server, url = start_server(policy, delay_s=delay, model="bench")
    print(url, flush=True)
    try:
        for _ in sys.stdin:  # each line asks for this process's CPU seconds so far; EOF stops the server
            print(time.process_time(), flush=True)
    finally:
        server.stop()
    """
)

IMAGE_SIDE = 64


def make_dataset(folder: Path, count: int) -> str:
    rng = np.random.default_rng(0)
    records = []
    for index in range(count):
        Image.fromarray(rng.integers(0, 255, (IMAGE_SIDE, IMAGE_SIDE, 3), dtype=np.uint8)).save(folder / f"img{index}.png")
        records.append({"id": f"q{index}", "image": f"img{index}.png", "question": "What colour is the small sign?", "answer": "red"})
    (folder / "data.json").write_text(json.dumps(records))
    return f"json:{folder / 'data.json'}"


def encode_ms_per_turn(folder: Path, repeats: int = 300) -> float:
    """The image encodes one turn costs at these sizes: a data-URL JPEG (q95) and a views/ JPEG save (q92)."""
    with Image.open(folder / "img0.png") as original:
        image = original.convert("RGB")
    started = time.process_time()
    for _ in range(repeats):
        data_url(image, "JPEG", 95)
        image.save(io.BytesIO(), format="JPEG", quality=92)
    return (time.process_time() - started) / repeats * 1e3


def server_cpu(server: subprocess.Popen) -> float:
    """The server process's CPU seconds so far."""
    server.stdin.write("cpu\n")
    server.stdin.flush()
    return float(server.stdout.readline())


def bench(policy_class: Any, urls: list[str], folder: Path, data: str, concurrency: int, delay: float, zooms: int, waves: int,
          name: str) -> dict[str, float]:
    episodes = concurrency * waves
    questions = 32
    samples = -(-episodes // questions)
    config = EvalConfig(
        data=data, out=folder / f"run-{name}-c{concurrency}", samples=samples, max_turns=zooms + 2, concurrency=concurrency,
        progress=False, report=False, max_pixels=IMAGE_SIDE * IMAGE_SIDE, min_pixels=28 * 28,
    )
    policy = policy_class(urls, model="bench", max_connections=8192)
    with RssPeak() as memory:
        cpu = time.process_time()
        result = run_eval(config, policy, console=Console(file=io.StringIO()))
        cpu = time.process_time() - cpu
    policy.close()
    assert result.errors == 0, result.statuses
    return {
        "turns": result.turns,
        "wall_s": result.elapsed_s,
        "turns_per_s": result.turns_per_s,
        "ideal": concurrency / delay,
        "cpu_ms_per_turn": cpu / result.turns * 1e3,
        "mb_per_episode": (memory.peak - memory.start) / concurrency,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--delay", type=float, default=1.0, help="L: the servers' fixed seconds per request")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[16, 64, 256])
    parser.add_argument("--endpoints", type=int, default=1, help="server processes the policy balances over")
    parser.add_argument("--zooms", type=int, default=4, help="zoom turns before the answer (turns per episode = zooms + 1)")
    parser.add_argument("--waves", type=int, default=3, help="episodes = waves x concurrency")
    parser.add_argument("--baseline", default=BASELINE, help="also run the HttpPolicy of this git revision ('none' to skip)")
    parser.add_argument("--dir", type=Path, default=None, help="where the run directories go (default: a temporary folder)")
    args = parser.parse_args()

    threading.stack_size(512 * 1024)  # 2,048 episode threads at the default 8 MB reserve 16 GB of address space
    zoom = protocol.render_zoom(protocol.Zoom((0.25, 0.25, 0.75, 0.75)))
    servers = [
        subprocess.Popen([sys.executable, "-c", SERVER, str(args.zooms), str(args.delay), "<think>Closer.</think>" + zoom],
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        for _ in range(args.endpoints)
    ]
    clients = {"HttpPolicy": HttpPolicy}
    if args.baseline != "none":
        clients = {f"old {args.baseline}": load_baseline(args.baseline), **clients}
    try:
        urls = [server.stdout.readline().strip() for server in servers]
        if not all(url.startswith("http") for url in urls):
            raise SystemExit(f"a bench server did not start (got {urls!r})")
        with tempfile.TemporaryDirectory(dir=args.dir) as scratch:
            folder = Path(scratch)
            data = make_dataset(folder, 32)
            encode_ms = encode_ms_per_turn(folder)
            print(
                f"mini-o3 eval throughput: {args.endpoints} server process(es), L = {args.delay:g} s per request, "
                f"{args.zooms + 1} turns per episode, {IMAGE_SIDE}x{IMAGE_SIDE} images, {os.cpu_count()} cores, runs in {folder}"
            )
            print(f"image encoding measured separately: {encode_ms:.3f} ms per turn (subtracted below)")
            print(f"{'client':14} {'C':>5} {'turns':>6} {'wall s':>7} {'turns/s':>8} {'0.9C/L':>7} {'ratio':>6} {'CPU ms/turn':>12} "
                  f"{'excl. enc.':>11} {'MB/episode':>10} {'server ms/req':>13}  verdict")
            ok = True
            for concurrency in args.concurrency:
                for name, policy_class in clients.items():
                    before = sum(server_cpu(server) for server in servers)
                    figures = bench(policy_class, urls, folder, data, concurrency, args.delay, args.zooms, args.waves, name.replace(" ", "-"))
                    server_ms = (sum(server_cpu(server) for server in servers) - before) / figures["turns"] * 1e3
                    ratio = figures["turns_per_s"] / figures["ideal"]
                    cpu_excluded = figures["cpu_ms_per_turn"] - encode_ms
                    passed = ratio >= 0.9 and cpu_excluded < (2 if concurrency >= 1024 else 10)
                    ok &= passed
                    print(
                        f"{name:14} {concurrency:>5} {figures['turns']:>6} {figures['wall_s']:>7.2f} {figures['turns_per_s']:>8.1f} "
                        f"{0.9 * figures['ideal']:>7.1f} {ratio:>6.3f} {figures['cpu_ms_per_turn']:>12.2f} {cpu_excluded:>11.2f} "
                        f"{figures['mb_per_episode']:>10.3f} {server_ms:>13.2f}  {'ok' if passed else 'MISSED'}",
                        flush=True,
                    )
            print("targets: turns/s >= 0.9 x C / L (ratio >= 0.9); client CPU per turn excluding image encoding < 10 ms "
                  "(< 2 ms at C >= 1,024)")
            print("all targets met" if ok else "a target was MISSED (see above)")
            return 0
    finally:
        for server in servers:
            server.stdin.close()
        for server in servers:
            server.wait(timeout=60)


if __name__ == "__main__":
    sys.exit(main())
