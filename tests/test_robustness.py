"""Issue 13 end to end: hostile text from a data file and from a real loopback server never stops an eval.

The server is a plain HTTP server that sends what a real one may: JSON whose strings hold lone
UTF-16 surrogates (valid JSON escapes such as "\\udc80"), in the content and the finish reason.
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mini_o3.eval.runner import EvalConfig, run_eval
from mini_o3.policies.http import HttpPolicy

ZOOM = '<think>closer \\udc80</think><grounding>{"bbox_2d": [0.1, 0.1, 0.6, 0.6], "source": "original_image"}</grounding>'
ANSWER = "<think>it says \\ud800</think><answer>red\\udc80</answer>"


@pytest.fixture()
def surrogate_server():
    """Answers turn 1 with a zoom and turn 2 with an answer, both holding lone surrogates as JSON escapes."""

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            request = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            turn = sum(1 for message in request["messages"] if message["role"] == "assistant")
            content = ZOOM if turn == 0 else ANSWER
            # Written by hand: json.dumps would escape the backslash of the \\udc80 escape.
            body = ('{"choices": [{"message": {"content": "' + content.replace('"', '\\"') + '"}, '
                    '"finish_reason": "stop\\udc80"}], "usage": {"prompt_tokens": 50, "completion_tokens": 9}}').encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    server.shutdown()
    server.server_close()


def test_lone_surrogates_from_the_data_and_the_server_never_stop_an_eval(tmp_path: Path, surrogate_server: str) -> None:
    rng = np.random.default_rng(0)
    records = []
    for index in range(3):
        Image.fromarray(rng.integers(0, 255, (120, 160, 3), dtype=np.uint8)).save(tmp_path / f"img{index}.png")
        records.append({"id": f"q{index}", "image": f"img{index}.png", "question": f"what does \udc80 sign {index} say?", "answer": "red"})
    (tmp_path / "data.json").write_text(json.dumps(records))  # \udc80 escapes: valid JSON
    config = EvalConfig(data=f"json:{tmp_path / 'data.json'}", out=tmp_path / "run", samples=2, max_turns=4, progress=False,
                        max_pixels=160 * 120, min_pixels=28 * 28)
    policy = HttpPolicy([surrogate_server], model="m", max_retries=0)
    result = run_eval(config, policy)
    assert (result.episodes, result.ran, result.errors) == (6, 6, 0), result.statuses
    assert result.statuses == {"answered": 6}
    trajectory = json.loads((tmp_path / "run" / "trajectories.jsonl").read_text(encoding="utf-8").splitlines()[0])
    assert trajectory["answer"] == "red\ufffd" and trajectory["question"].startswith("what does \ufffd sign")
    assert trajectory["turns"][0]["finish_reason"] == "stop\ufffd"
    assert "red\ufffd" in (tmp_path / "run" / "index.html").read_text(encoding="utf-8")
    again = run_eval(config, policy)
    assert (again.ran, again.resumed) == (0, 6)  # every episode was saved: nothing runs again
