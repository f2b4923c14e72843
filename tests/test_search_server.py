"""`mini-o3 search` against a real server process serving the tiny model, with the requests checked.

transformers' own `transformers serve` cannot serve Qwen2.5-VL here: its processor needs the
video processor, which needs torchvision (not installable on this CPU stack), so the server
under test is `mini-o3 serve`, started as a separate process. A recording proxy on loopback
sits between client and server and keeps every request body.
"""

from __future__ import annotations

import base64
import io
import json
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from mini_o3.agent import protocol
from mini_o3.cli import app
from mini_o3.models.tiny import build_tiny

pytestmark = pytest.mark.slow


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class RecordingProxy(ThreadingHTTPServer):
    """Forwards every request to `upstream` and keeps the JSON bodies of chat requests."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream
        self.bodies: list[dict] = []
        super().__init__(("127.0.0.1", 0), _ProxyHandler)


class _ProxyHandler(BaseHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass

    def _forward(self, body: bytes | None) -> None:
        request = urllib.request.Request(self.server.upstream + self.path, data=body, method=self.command)
        for key in ("Content-Type", "Authorization"):
            if self.headers.get(key):
                request.add_header(key, self.headers[key])
        try:
            with urllib.request.urlopen(request, timeout=120) as response:
                status, payload = response.status, response.read()
        except urllib.error.HTTPError as error:
            status, payload = error.code, error.read()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def do_GET(self) -> None:
        self._forward(None)

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        if self.path.endswith("/chat/completions"):
            self.server.bodies.append(json.loads(body))
        self._forward(body)


@pytest.fixture(scope="module")
def served_tiny(tmp_path_factory: pytest.TempPathFactory):
    checkpoint = build_tiny(tmp_path_factory.mktemp("tiny") / "ckpt", seed=3)
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "mini_o3.cli", "serve", "--model-path", str(checkpoint), "--port", str(port), "--name", "tiny"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 120
    while True:
        try:
            urllib.request.urlopen(url + "/health", timeout=2).read()
            break
        except OSError:
            if process.poll() is not None or time.time() > deadline:
                output = process.stdout.read().decode() if process.stdout else ""
                process.kill()
                raise RuntimeError(f"mini-o3 serve did not start:\n{output}")
            time.sleep(0.3)
    proxy = RecordingProxy(url)
    thread = threading.Thread(target=proxy.serve_forever, daemon=True)
    thread.start()
    yield proxy
    proxy.shutdown()
    process.terminate()
    process.wait(timeout=30)


def test_search_against_the_served_tiny_model(served_tiny: RecordingProxy, tmp_path: Path) -> None:
    image = tmp_path / "scene.png"
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (500, 700, 3), dtype=np.uint8)).save(image)
    proxy_url = f"http://127.0.0.1:{served_tiny.server_address[1]}/v1"
    out = tmp_path / "out"
    result = CliRunner().invoke(
        app,
        ["search", str(image), "What is in the corner?", "--api", proxy_url, "--model", "tiny", "--max-turns", "3",
         "--max-new-tokens", "24", "--seed", "1", "--out", str(out)],
    )
    assert result.exit_code == 0, result.output
    assert "status:" in result.output and (out / "trajectories.jsonl").is_file() and (out / "boxes.png").is_file()

    assert served_tiny.bodies, "no chat request reached the server"
    first = served_tiny.bodies[0]
    assert first["model"] == "tiny"
    assert first["stop"] == [protocol.STOP_STRING]
    assert first["max_tokens"] == 24
    system, user = first["messages"][0], first["messages"][1]
    assert system["role"] == "system"
    system_text = system["content"] if isinstance(system["content"], str) else system["content"][0]["text"]
    assert system_text == protocol.SYSTEM_PROMPT
    assert [part["type"] for part in user["content"]] == ["image_url", "text"]
    assert user["content"][1]["text"] == "\nWhat is in the corner?"
    url = user["content"][0]["image_url"]["url"]
    assert url.startswith("data:image/")
    sent = Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1])))
    assert sent.size == (700, 500)  # inside the pixel limits: shown at full size
    # Every later request resends the whole conversation: each holds as many images as
    # the trajectory had views by then.
    for body in served_tiny.bodies:
        assert body["stop"] == [protocol.STOP_STRING]
        images = sum(
            1 for message in body["messages"] if isinstance(message["content"], list)
            for part in message["content"] if part["type"] == "image_url"
        )
        assert images >= 1
