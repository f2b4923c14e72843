"""Eval at scale: 1,024 and 2,048 episodes in flight over 4 loopback endpoints, a thread per episode.

An evaluation of VisualProbe-hard at K=32 over 8 servers keeps 1,000-2,000 episodes in flight.
This bench runs `run_eval` (episodes, trajectories, views, scoring: the whole job) with C
episodes in flight against N light server processes that sleep a fixed L seconds per request,
and prints, for each C and client:

- throughput: assistant turns per second of the episode phase over the ideal C / L (target 0.9);
- client CPU per turn: the client process's CPU time (every thread) over the whole `run_eval`
  call divided by its turns, with and without the image encodes a turn costs at these sizes
  (target: under 2 ms without them);
- memory per episode in flight: the client process's peak resident memory growth during the
  run divided by C. Each measurement runs in a fresh process, so one run's freed memory does
  not flatter the next; the thread stack size is the runner's own (no `threading.stack_size`).

The throughput runs use 64x64 images so that image work does not hide the client's own cost.
`--image-side S` instead runs photo-like S x S JPEG originals at eval's default pixel settings
(views up to 2M pixels): memory per episode in flight at real sizes, where the decoded
original, the views and their encodings dominate.

Clients, each in the same run on the same servers and data:
- `httpx`: HttpPolicy as it is (the job's real path);
- `old`: the HttpPolicy of git revision `--baseline` (default fab8e62, over http.client);
- `unshared`: `httpx` with every episode decoding its own original (before SharedOriginals);
- `no-http`: an in-process ScriptedPolicy that sleeps L per turn: the same threads, episodes
  and files without any transport, the floor the HTTP client adds to.

The servers are not mini-o3 serve (a thread per connection that decodes every image): each is
one asyncio process that reads the request, counts its assistant turns, and answers a zoom or
the answer after L seconds, so 512 open connections cost it little. Its CPU per request is
measured in the same run and its ceiling (requests a second per core) printed, so a reader can
see that it is not the bottleneck.

Run:    .venv/bin/python bench/bench_scale.py [--delay 10] [--concurrency 1024 2048] [--endpoints 4]
                                              [--clients httpx old no-http] [--zooms 3] [--waves 2]
Memory: .venv/bin/python bench/bench_scale.py --image-side 3072 --concurrency 128 --clients unshared httpx --waves 1 --delay 5
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ZOOM = '<think>Closer.</think><grounding>{"bbox_2d": [0.25, 0.25, 0.75, 0.75], "source": "original_image"}</grounding>'
ANSWER = "<think>Found it.</think><answer>red</answer>"
ZOOM_STOP = "</grounding>"


# ---------------------------------------------------------------- the light server


def _reply(body: bytes, zooms: int) -> bytes:
    request = json.loads(body)
    turns = sum(1 for message in request["messages"] if message.get("role") == "assistant")
    text = ZOOM if turns < zooms else ANSWER
    choice: dict[str, Any] = {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}
    if text.endswith(ZOOM_STOP) and not request.get("include_stop_str_in_output"):
        choice["message"]["content"] = text[: -len(ZOOM_STOP)]
        choice["stop_reason"] = ZOOM_STOP
    usage = {"prompt_tokens": 100, "completion_tokens": 20, "total_tokens": 120}
    return json.dumps({"id": "x", "object": "chat.completion", "model": "bench", "choices": [choice], "usage": usage}).encode()


async def _connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, delay: float, zooms: int) -> None:
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            method, path = lines[0].split(" ")[:2]
            length = next((int(line.split(":", 1)[1]) for line in lines[1:] if line.lower().startswith("content-length:")), 0)
            body = await reader.readexactly(length) if length else b""
            if method == "POST":
                started = time.perf_counter()
                payload = _reply(body, zooms)
                await asyncio.sleep(max(0.0, delay - (time.perf_counter() - started)))
            else:
                payload = json.dumps({"object": "list", "data": [{"id": "bench", "object": "model"}]}).encode()
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(payload) + payload)
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError):
        pass
    finally:
        writer.close()


def serve(delay: float, zooms: int) -> None:
    """A server process: print its URL, answer chat requests after `delay` s; each stdin line asks for its CPU seconds."""

    async def main() -> None:
        server = await asyncio.start_server(lambda r, w: _connection(r, w, delay, zooms), "127.0.0.1", 0, backlog=4096)
        port = server.sockets[0].getsockname()[1]
        print(f"http://127.0.0.1:{port}/v1", flush=True)
        loop = asyncio.get_running_loop()
        while await loop.run_in_executor(None, sys.stdin.readline):
            print(time.process_time(), flush=True)
        server.close()

    asyncio.run(main())


# ---------------------------------------------------------------- one measurement (a fresh process)


def photo_dataset(folder: Path, count: int, side: int) -> str:
    """`count` photo-like side x side JPEGs (smooth shading, mild noise: about a photo's JPEG size) and their data file."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    ramp = np.linspace(0, 1, side, dtype=np.float32)
    records = []
    for index in range(count):
        shade = 60 + 120 * np.add.outer(ramp * rng.random(), ramp * rng.random())
        pixels = shade[..., None] + np.array([0, 30, 60], np.float32) + rng.normal(0, 6, (side, side, 3)).astype(np.float32)
        Image.fromarray(pixels.clip(0, 255).astype(np.uint8)).save(folder / f"photo{index}.jpg", quality=90)
        records.append({"id": f"q{index}", "image": f"photo{index}.jpg", "question": "What colour is the small sign?", "answer": "red"})
    (folder / "photos.json").write_text(json.dumps(records))
    return f"json:{folder / 'photos.json'}"


def measure(client: str, urls: list[str], data: str, out: Path, concurrency: int, delay: float, zooms: int, waves: int,
            baseline: str, real_size: bool = False) -> dict[str, float]:
    """Run `run_eval` once with `client`; its figures as a dict."""
    from rich.console import Console

    from mini_o3.eval.runner import EvalConfig, run_eval

    sys.path.insert(0, str(HERE))
    from bench_http import RssPeak  # a sibling script

    if client in ("httpx", "unshared"):
        from mini_o3.policies.http import HttpPolicy

        policy: Any = HttpPolicy(urls, model="bench", max_connections=8192)
        if client == "unshared":  # as before SharedOriginals: every episode decodes its own original
            from mini_o3.agent.loop import SharedOriginals

            SharedOriginals.get = lambda self, sample: None  # type: ignore[method-assign]
    elif client == "old":
        from bench_http import load_baseline

        policy = load_baseline(baseline)(urls, model="bench", max_connections=8192)
    elif client == "no-http":
        from mini_o3.policies.scripted import ScriptedPolicy

        policy = ScriptedPolicy([ZOOM] * zooms + [ANSWER], delay_s=delay)
    else:
        raise SystemExit(f"unknown client {client!r}")
    config = EvalConfig(
        data=data, out=out, samples=-(-concurrency * waves // 32), max_turns=zooms + 2, concurrency=concurrency,
        progress=False, report=False, **({} if real_size else {"max_pixels": 64 * 64, "min_pixels": 28 * 28}),
    )
    threads = []
    with RssPeak() as memory:
        watcher = threading.Thread(target=lambda: _count_threads(threads, memory), daemon=True)
        watcher.start()
        cpu = time.process_time()
        result = run_eval(config, policy, console=Console(file=io.StringIO()))
        cpu = time.process_time() - cpu
    if hasattr(policy, "close"):
        policy.close()
    if result.errors:
        raise SystemExit(f"{result.errors} episodes failed: {result.statuses}")
    return {
        "turns": result.turns, "wall_s": result.elapsed_s, "turns_per_s": result.turns_per_s, "ideal": concurrency / delay,
        "cpu_ms_per_turn": cpu / result.turns * 1e3, "mb_per_episode": (memory.peak - memory.start) / concurrency,
        "peak_mb": memory.peak, "threads": max(threads or [0]),
    }


def _count_threads(seen: list[int], memory: Any) -> None:
    while not memory._done.wait(0.5):
        seen.append(threading.active_count())


# ---------------------------------------------------------------- the driver


def _server_cpu(server: subprocess.Popen) -> float:
    server.stdin.write("cpu\n")
    server.stdin.flush()
    return float(server.stdout.readline())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--delay", type=float, default=10.0, help="L: the servers' fixed seconds per request")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1024, 2048], help="episodes in flight")
    parser.add_argument("--endpoints", type=int, default=4, help="server processes the policy balances over")
    parser.add_argument("--clients", nargs="+", default=["httpx", "old", "no-http"], help="httpx, old, unshared, no-http")
    parser.add_argument("--zooms", type=int, default=3, help="zoom turns before the answer (turns per episode = zooms + 1)")
    parser.add_argument("--waves", type=int, default=2, help="episodes = waves x concurrency")
    parser.add_argument("--baseline", default="fab8e62", help="git revision of the `old` client")
    parser.add_argument("--image-side", type=int, default=0, help="photo-like originals of this side at eval's default pixel settings (memory)")
    parser.add_argument("--switch-interval", type=float, default=0.0,
                        help="sys.setswitchinterval in the client (a diagnostic: GIL waiters wake this often; Python's default 0.005)")
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--one", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args.delay, args.zooms)
        return 0
    if args.one:
        if args.switch_interval:
            sys.setswitchinterval(args.switch_interval)
        spec = json.loads(args.one)
        figures = measure(spec["client"], spec["urls"], spec["data"], Path(spec["out"]), spec["concurrency"], args.delay,
                          args.zooms, args.waves, args.baseline, args.image_side > 0)
        print(json.dumps(figures))
        return 0

    sys.path.insert(0, str(HERE))
    from bench_eval import encode_ms_per_turn, make_dataset  # a sibling script

    servers = [
        subprocess.Popen([sys.executable, __file__, "--serve", "--delay", str(args.delay), "--zooms", str(args.zooms)],
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        for _ in range(args.endpoints)
    ]
    try:
        urls = [server.stdout.readline().strip() for server in servers]
        with tempfile.TemporaryDirectory() as scratch:
            folder = Path(scratch)
            data = make_dataset(folder, 32)
            encode_ms = encode_ms_per_turn(folder)
            if args.image_side:
                data, encode_ms = photo_dataset(folder, 32, args.image_side), 0.0  # at real sizes the encodes are part of the cost
            load = os.getloadavg()
            images = f"{args.image_side}x{args.image_side} photo-like originals" if args.image_side else "64x64 images"
            print(f"mini-o3 eval at scale: {args.endpoints} asyncio server processes, L = {args.delay:g} s, {args.zooms + 1} turns "
                  f"per episode, {args.waves} waves, {images}, {os.cpu_count()} cores, load average {load[0]:.1f} {load[1]:.1f} {load[2]:.1f}")
            print(f"image encoding per turn at these sizes: {encode_ms:.3f} ms (subtracted in 'excl.')")
            print(f"{'client':8} {'C':>5} {'turns':>6} {'wall s':>7} {'turns/s':>8} {'ratio':>6} {'CPU ms/turn':>11} {'excl.':>6} "
                  f"{'MB/episode':>10} {'peak MB':>8} {'threads':>7} {'srv ms/req':>10} {'srv ceiling/s':>13}  verdict")
            ok = True
            for concurrency in args.concurrency:
                for client in args.clients:
                    spec = {"client": client, "urls": urls, "data": data, "out": str(folder / f"run-{client}-{concurrency}"),
                            "concurrency": concurrency}
                    before = sum(_server_cpu(server) for server in servers)
                    done = subprocess.run(
                        [sys.executable, __file__, "--one", json.dumps(spec), "--delay", str(args.delay), "--zooms", str(args.zooms),
                         "--waves", str(args.waves), "--baseline", args.baseline, "--image-side", str(args.image_side),
                         "--switch-interval", str(args.switch_interval)],
                        capture_output=True, text=True,
                    )
                    if done.returncode != 0:
                        print(f"{client:8} {concurrency:>5} FAILED: {done.stderr.strip().splitlines()[-1:]}", flush=True)
                        ok = False
                        continue
                    figures = json.loads(done.stdout.strip().splitlines()[-1])
                    server_ms = (sum(_server_cpu(server) for server in servers) - before) / figures["turns"] * 1e3
                    ceiling = 1e3 / server_ms if server_ms > 0 else float("inf")
                    ratio = figures["turns_per_s"] / figures["ideal"]
                    excluded = figures["cpu_ms_per_turn"] - encode_ms
                    passed = ratio >= 0.9 and excluded < 2.0
                    if client == "httpx":
                        ok &= passed
                    print(f"{client:8} {concurrency:>5} {figures['turns']:>6} {figures['wall_s']:>7.1f} {figures['turns_per_s']:>8.1f} "
                          f"{ratio:>6.3f} {figures['cpu_ms_per_turn']:>11.2f} {excluded:>6.2f} {figures['mb_per_episode']:>10.3f} "
                          f"{figures['peak_mb']:>8.0f} {figures['threads']:>7} "
                          f"{server_ms if client != 'no-http' else 0:>10.2f} {ceiling if client != 'no-http' else 0:>13.0f}  "
                          f"{'ok' if passed else 'MISSED'}", flush=True)
            load = os.getloadavg()
            print(f"load average after: {load[0]:.1f} {load[1]:.1f} {load[2]:.1f}")
            print("targets (httpx rows): turns/s >= 0.9 x C / L; client CPU per turn excluding image encoding < 2 ms")
            print("all targets met" if ok else "a target was MISSED (see above)")
            return 0 if ok else 1
    finally:
        for server in servers:
            server.stdin.close()
        for server in servers:
            server.wait(timeout=60)


if __name__ == "__main__":
    sys.exit(main())
