"""HttpPolicy throughput, client CPU and memory against served ScriptedPolicies with a fixed delay L.

Each server (mini_o3.serve) runs in its own process, so this process's CPU time
(time.process_time) is the client's alone; images are encoded before the clock starts, so the
figure is the transport's cost per turn. Each of C threads runs episodes of a few turns (the
conversation grows by a zoom and a crop per turn, as a real episode does); the ideal
throughput is C / L turns a second. With `--endpoints N` the policy balances over N servers.

Old and new in one run: `--baseline REF` also runs the HttpPolicy of git revision REF (default
fab8e62, the last one written over http.client) on the same requests. `--compare` adds a bare
shared httpx.Client and, when installed, the openai client. "server busy" is the servers' CPU
time over the wall time and their number: near 100% the single-process Python servers (GIL-bound,
decoding every image of every request) are the bottleneck, not the client. "MB/thread" is the
growth of this process's resident memory during the run (its peak, sampled) divided by C (threads, their stacks and
connections, request bodies in flight).

    .venv/bin/python bench/bench_http.py [--delay 0.5] [--concurrency 16,64,256] [--endpoints 1] [--baseline REF] [--compare]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import multiprocessing as mp
import resource
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable

from PIL import Image, ImageDraw

from mini_o3.agent import protocol
from mini_o3.agent.env import View
from mini_o3.agent.policy import SamplingParams
from mini_o3.agent.trajectory import ViewRecord
from mini_o3.policies.http import HttpPolicy

ZOOM = '<think>Look closer.</think><grounding>{"bbox_2d": [0.25, 0.25, 0.75, 0.75], "source": "original_image"}</grounding>'
BASELINE = "fab8e62"
"""The last revision whose HttpPolicy was written over http.client."""


def _serve(conn: Any, delay_s: float, turns: int) -> None:
    """A server process: serve a script of zooms then an answer; report CPU time on request."""
    from mini_o3.policies.scripted import ScriptedPolicy
    from mini_o3.serve import start_server

    server, url = start_server(ScriptedPolicy([ZOOM] * (turns - 1) + ["<answer>red</answer>"]), delay_s=delay_s, model="m")
    conn.send(url)
    while conn.recv() == "cpu":
        conn.send(time.process_time())
    server.stop()


def load_baseline(revision: str) -> type:
    """The HttpPolicy class of git revision `revision`, loaded beside the current one."""
    root = Path(__file__).resolve().parents[1]
    source = subprocess.run(["git", "-C", str(root), "show", f"{revision}:src/mini_o3/policies/http.py"],
                            capture_output=True, text=True, check=True).stdout
    name = f"mini_o3_http_{revision}"
    spec = importlib.util.spec_from_loader(name, loader=None)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up by name
    exec(compile(source, f"{revision}:src/mini_o3/policies/http.py", "exec"), module.__dict__)
    return module.HttpPolicy


def _image(width: int, height: int, seed: int) -> Image.Image:
    image = Image.new("RGB", (width, height), (200 - seed % 50, 220, 235))
    draw = ImageDraw.Draw(image)
    for i in range(12):
        x, y = (37 * i + 11 * seed) % width, (53 * i + 7 * seed) % height
        draw.rectangle((x, y, x + 24, y + 16), fill=(40 * i % 255, 90, 160))
    return image


def _conversations(threads: int, turns: int, size: int, fmt: str) -> list[list[list[dict[str, Any]]]]:
    """Per thread, the messages of each turn of one episode, with every view encoded up front."""
    episodes = []
    for thread in range(threads):
        views = [View(ViewRecord(index=i, box=(0, 0, size, size), size=(size, size)), _image(size, size * 3 // 4, thread + i)) for i in range(turns)]
        for view in views:
            view.data_url(fmt)
        messages = [protocol.system_message(), protocol.first_user_message(views[0], f"What is in box {thread}?")]
        per_turn = []
        for turn in range(turns):
            per_turn.append(list(messages))
            messages += [protocol.assistant_message(ZOOM), protocol.observation_message(views[min(turn + 1, turns - 1)], turn, turn + 1)]
        episodes.append(per_turn)
    return episodes


def rss_mb() -> float:
    """This process's resident memory now, in MB (Linux)."""
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * resource.getpagesize() / 2**20


class RssPeak:
    """The highest resident memory seen while the block runs, sampled every 20 ms."""

    def __enter__(self) -> "RssPeak":
        self.start = self.peak = rss_mb()
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._done.wait(0.02):
            self.peak = max(self.peak, rss_mb())

    def __exit__(self, *exc: Any) -> None:
        self._done.set()
        self._thread.join()
        self.peak = max(self.peak, rss_mb())


def _run(call: Callable[[list[dict[str, Any]]], str], episodes: list[list[list[dict[str, Any]]]], repeats: int) -> tuple[float, float, int, float]:
    """Run every thread's episode `repeats` times at once; (wall s, client CPU s, turns, peak RSS growth MB)."""
    barrier = threading.Barrier(len(episodes) + 1)
    errors: list[BaseException] = []

    def worker(per_turn: list[list[dict[str, Any]]]) -> None:
        barrier.wait()
        try:
            for _ in range(repeats):
                for messages in per_turn:
                    call(messages)
        except BaseException as error:  # noqa: BLE001 - reported below
            errors.append(error)

    with RssPeak() as memory:
        threads = [threading.Thread(target=worker, args=(per_turn,), daemon=True) for per_turn in episodes]
        for thread in threads:
            thread.start()
        barrier.wait()
        cpu, wall = time.process_time(), time.perf_counter()
        for thread in threads:
            thread.join()
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    if errors:
        raise errors[0]
    return wall, cpu, sum(len(per_turn) for per_turn in episodes) * repeats, memory.peak - memory.start


def _httpx_call(url: str, policy: HttpPolicy, sampling: SamplingParams) -> Callable[[list[dict[str, Any]]], str]:
    import httpx

    client = httpx.Client(limits=httpx.Limits(max_connections=4096, max_keepalive_connections=4096), timeout=120)

    def call(messages: list[dict[str, Any]]) -> str:
        body = policy._body(policy._messages_json(messages), sampling)
        reply = client.post(url + "/chat/completions", content=body, headers={"Content-Type": "application/json"})
        return reply.json()["choices"][0]["message"]["content"]

    return call


def _openai_call(url: str, policy: HttpPolicy, sampling: SamplingParams) -> Callable[[list[dict[str, Any]]], str]:
    import openai

    client = openai.OpenAI(base_url=url, api_key="unused", max_retries=0, timeout=120)

    def call(messages: list[dict[str, Any]]) -> str:
        openai_messages = json.loads(policy._messages_json(messages))
        reply = client.chat.completions.create(model="m", messages=openai_messages, max_tokens=sampling.max_new_tokens, stop=list(sampling.stop))
        return reply.choices[0].message.content or ""

    return call


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--delay", type=float, default=0.5, help="the servers' fixed delay L per request, seconds")
    parser.add_argument("--concurrency", default="16,64,256", help="comma-separated thread counts")
    parser.add_argument("--endpoints", type=int, default=1, help="server processes the policy balances over")
    parser.add_argument("--turns", type=int, default=4, help="turns per episode (images grow by one a turn)")
    parser.add_argument("--repeats", type=int, default=4, help="episodes per thread")
    parser.add_argument("--size", type=int, default=224, help="image width in pixels (height is 3/4 of it)")
    parser.add_argument("--format", default="JPEG", choices=["JPEG", "PNG"])
    parser.add_argument("--baseline", default=BASELINE, help="also run the HttpPolicy of this git revision ('none' to skip)")
    parser.add_argument("--compare", action="store_true", help="also run a bare shared httpx.Client and the openai client (one endpoint)")
    args = parser.parse_args()

    context = mp.get_context("spawn")
    pipes, servers, urls = [], [], []
    for _ in range(args.endpoints):
        ours, theirs = context.Pipe()
        server = context.Process(target=_serve, args=(theirs, args.delay, args.turns), daemon=True)
        server.start()
        pipes.append(ours)
        servers.append(server)
    urls = [pipe.recv() for pipe in pipes]
    sampling = SamplingParams(temperature=1.0, max_new_tokens=512)
    policy = HttpPolicy(urls, "m", image_format=args.format, max_connections=8192)

    clients: dict[str, Callable[[list[dict[str, Any]]], str]] = {}
    if args.baseline != "none":
        old = load_baseline(args.baseline)(urls, "m", image_format=args.format, max_connections=8192)
        clients[f"old {args.baseline}"] = lambda m: old.generate(m, sampling).text
    clients["HttpPolicy"] = lambda m: policy.generate(m, sampling).text
    if args.compare:
        clients["httpx.Client"] = _httpx_call(urls[0], policy, sampling)
        if importlib.util.find_spec("openai") is not None:
            clients["openai.OpenAI"] = _openai_call(urls[0], policy, sampling)

    def servers_cpu() -> float:
        for pipe in pipes:
            pipe.send("cpu")
        return sum(pipe.recv() for pipe in pipes)

    levels = [int(c) for c in args.concurrency.split(",")]
    body_kb = len(policy._body(policy._messages_json(_conversations(1, args.turns, args.size, args.format)[0][-1]), sampling)) / 1024
    print(f"server delay L = {args.delay} s over {args.endpoints} endpoint(s); {args.turns} turns an episode, {args.repeats} episodes "
          f"a thread; {args.size}px {args.format} images, last turn's body {body_kb:.0f} KB")
    print(f"{'client':14s} {'threads':>7s} {'turns':>6s} {'wall s':>7s} {'turns/s':>8s} {'ideal':>7s} {'ratio':>6s} "
          f"{'client CPU ms/turn':>19s} {'MB/thread':>9s} {'server CPU ms/turn':>19s} {'server busy':>11s}")
    threading.stack_size(512 * 1024)  # 2,048 threads at the default 8 MB reserve 16 GB of address space
    for threads in levels:
        episodes = _conversations(threads, args.turns, args.size, args.format)
        for name, call in clients.items():
            if name in ("httpx.Client", "openai.OpenAI") and args.endpoints > 1:
                continue
            call(episodes[0][0])  # warm-up: imports, first connection
            server_cpu = servers_cpu()
            try:
                wall, cpu, turns, rss_mb = _run(call, episodes, args.repeats)
            except Exception as error:  # noqa: BLE001 - a shared httpx.Client fails at 256 threads: report it, go on
                servers_cpu()
                print(f"{name:14s} {threads:7d} failed: {type(error).__name__}: {error}", flush=True)
                continue
            server_cpu = servers_cpu() - server_cpu
            ideal = threads / args.delay
            print(f"{name:14s} {threads:7d} {turns:6d} {wall:7.2f} {turns / wall:8.1f} {ideal:7.1f} {turns / wall / ideal:6.2f} "
                  f"{cpu / turns * 1000:19.2f} {rss_mb / threads:9.3f} {server_cpu / turns * 1000:19.2f} "
                  f"{server_cpu / wall / args.endpoints:10.0%}", flush=True)
    for pipe in pipes:
        pipe.send("stop")
    for server in servers:
        server.join(timeout=10)


if __name__ == "__main__":
    main()
