"""The mini-o3 command line end to end, against a real server on loopback."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from mini_o3.agent import protocol
from mini_o3.cli import app
from mini_o3.policies.scripted import ScriptedPolicy
from mini_o3.serve import start_server
from mini_o3.agent.trajectory import read_jsonl

runner = CliRunner()
SCRIPT = [
    "<think>The sign is small; zoom in.</think>" + protocol.render_zoom(protocol.Zoom((0.5, 0.5, 1.0, 1.0))),
    "<think>Closer.</think>" + protocol.render_zoom(protocol.Zoom((0.0, 0.0, 0.5, 0.5), "observation_1")),
    "<think>It reads STOP.</think><answer>STOP</answer>",
]


@pytest.fixture()
def server():
    server, url = start_server(ScriptedPolicy(SCRIPT))
    yield url
    server.stop()


@pytest.fixture()
def photo(tmp_path: Path) -> Path:
    path = tmp_path / "photo.jpg"
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (900, 1200, 3), dtype=np.uint8)).save(path)
    return path


def test_search_prints_the_trace_and_writes_outputs(server: str, photo: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = runner.invoke(app, ["search", str(photo), "What does the sign say?", "--api", server, "--model", "m", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "turn 1 · zoom" in result.output and "observation_2" in result.output
    assert "answered" in result.output and "STOP" in result.output
    (trajectory,) = list(read_jsonl(out / "trajectories.jsonl"))
    assert [view.box for view in trajectory.views] == [(0, 0, 1200, 900), (600, 450, 1199, 899), (600, 450, 899, 674)]
    assert all((out / view.file).is_file() for view in trajectory.views)
    boxes = Image.open(out / "boxes.png")
    assert boxes.size == (1200, 900)


def test_search_reports_a_missing_image_clearly(server: str, tmp_path: Path) -> None:
    result = runner.invoke(app, ["search", str(tmp_path / "nope.jpg"), "q", "--api", server, "--model", "m"])
    assert result.exit_code == 2 and "not found" in result.output and "nope.jpg" in result.output


def test_search_needs_exactly_one_policy(photo: Path) -> None:
    result = runner.invoke(app, ["search", str(photo), "q"])
    assert result.exit_code != 0 and "--model-path" in result.output


def test_eval_then_compare(server: str, photo: Path, tmp_path: Path) -> None:
    data = tmp_path / "data.jsonl"
    rows = [{"id": f"q{i}", "image": photo.name, "question": "What does the sign say?", "answer": answer} for i, answer in enumerate(["stop", "go"])]
    data.write_text("".join(json.dumps(row) + "\n" for row in rows))
    runs = []
    for name in ("a", "b"):
        out = tmp_path / name
        result = runner.invoke(app, ["eval", "--data", f"jsonl:{data}", "--api", server, "--model", "m", "--samples", "2", "--max-turns", "4", "--out", str(out)])
        assert result.exit_code == 0, result.output
        metrics = json.loads((out / "metrics.json").read_text())
        assert metrics["avg_at_k"] == 0.5  # "STOP" matches "stop", not "go"
        assert metrics["accuracy_by_budget"][:3] == [0.0, 0.0, 0.5]
        assert (out / "index.html").is_file()
        runs.append(out)
    result = runner.invoke(app, ["eval", "compare", str(runs[0]), str(runs[1])])
    assert result.exit_code == 0, result.output
    result = runner.invoke(app, ["eval", "rescore", str(runs[0])])
    assert result.exit_code == 0 and "0.5" in result.output, result.output


# ---------------------------------------------------------------- hostile use (issue 13)


class SlowServer:
    """A loopback chat server that answers every request after `delay_s`, counting them."""

    def __init__(self, delay_s: float) -> None:
        import threading
        import time
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        owner = self
        self.requests = 0

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length", 0)))
                owner.requests += 1
                time.sleep(delay_s)
                body = json.dumps({"choices": [{"message": {"content": "<answer>x</answer>"}, "finish_reason": "stop"}]}).encode()
                try:
                    self.send_response(200)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                except OSError:
                    pass  # the client gave up waiting

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture()
def slow_server():
    server = SlowServer(delay_s=2.0)
    yield server
    server.close()


def one_question(tmp_path: Path, photo: Path) -> Path:
    data = tmp_path / "data.jsonl"
    data.write_text(json.dumps({"id": "q0", "image": photo.name, "question": "What does the sign say?", "answer": "x"}) + "\n")
    return data


def _times_out_once_then_gives_up(server: SlowServer, command: list[str], saved: Path) -> None:
    import time

    before, started = server.requests, time.perf_counter()
    result = runner.invoke(app, [*command, "--timeout", "0.3", "--retries", "1"])
    assert server.requests - before == 2, result.output  # the first try and one retry
    assert time.perf_counter() - started < 15  # not 120 s a try
    (trajectory,) = list(read_jsonl(saved))
    assert trajectory.status.value == "error" and "timeout_s=0.3" in trajectory.error, trajectory.error


def test_timeout_and_retries_reach_the_http_client(slow_server: SlowServer, photo: Path, tmp_path: Path) -> None:
    command = ["search", str(photo), "q", "--api", slow_server.url, "--model", "m", "--out", str(tmp_path / "s")]
    _times_out_once_then_gives_up(slow_server, command, tmp_path / "s" / "trajectories.jsonl")


@pytest.mark.slow
def test_eval_and_collect_take_timeout_and_retries_too(slow_server: SlowServer, photo: Path, tmp_path: Path) -> None:
    data = one_question(photo.parent, photo)
    command = ["eval", "--data", f"jsonl:{data}", "--api", slow_server.url, "--model", "m", "--out", str(tmp_path / "e")]
    _times_out_once_then_gives_up(slow_server, command, tmp_path / "e" / "trajectories.jsonl")
    command = ["collect", "--data", f"jsonl:{data}", "--policy", "api", "--api", slow_server.url, "--model", "m",
               "--exemplars-per-prompt", "0", "--out", str(tmp_path / "c")]
    _times_out_once_then_gives_up(slow_server, command, tmp_path / "c" / "rounds" / "round_000" / "trajectories.jsonl")


def test_bad_timeout_or_retries_are_one_line_and_exit_2(photo: Path) -> None:
    for option in (["--timeout", "0"], ["--retries", "-1"]):
        result = runner.invoke(app, ["search", str(photo), "q", "--api", "http://127.0.0.1:9/v1", "--model", "m", *option])
        assert result.exit_code == 2 and "Traceback" not in result.output, result.output
        assert len(result.output.strip().splitlines()) == 1 and option[0] in result.output, result.output


def test_search_exits_1_when_the_episode_ended_in_error_and_still_writes_it(photo: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = runner.invoke(app, ["search", str(photo), "q", "--api", "http://127.0.0.1:9/v1", "--model", "m", "--out", str(out)])
    assert result.exit_code == 1, result.output
    assert "cannot reach" in result.output and (out / "trajectories.jsonl").is_file()


def test_search_names_a_folder_given_as_the_image(tmp_path: Path) -> None:
    (tmp_path / "album").mkdir()
    result = runner.invoke(app, ["search", str(tmp_path / "album"), "q", "--api", "http://127.0.0.1:9/v1", "--model", "m"])
    assert result.exit_code == 2 and "is a folder, not an image file" in result.output, result.output


def test_a_question_with_undecodable_bytes_from_the_shell_is_saved(server: str, photo: Path, tmp_path: Path) -> None:
    # Python hands bytes of the command line that are not UTF-8 to the program as lone surrogates.
    out = tmp_path / "out"
    result = runner.invoke(app, ["search", str(photo), "what does caf\udce9 say?", "--api", server, "--model", "m", "--out", str(out)])
    assert result.exit_code == 0, result.output
    (trajectory,) = list(read_jsonl(out / "trajectories.jsonl"))
    assert trajectory.question == "what does caf\ufffd say?"


def test_eval_max_pixels_below_the_default_minimum_lowers_it_and_says_so(server: str, photo: Path, tmp_path: Path) -> None:
    data = one_question(photo.parent, photo)
    base = ["eval", "--data", f"jsonl:{data}", "--api", server, "--model", "m", "--max-turns", "4"]
    result = runner.invoke(app, [*base, "--max-pixels", "30000", "--out", str(tmp_path / "a")])
    assert result.exit_code == 0, result.output
    assert "--min-pixels lowered to 30000" in result.output
    assert json.loads((tmp_path / "a" / "config.json").read_text())["config"]["min_pixels"] == 30000
    result = runner.invoke(app, [*base, "--max-pixels", "30000", "--min-pixels", "40000", "--out", str(tmp_path / "b")])
    assert result.exit_code == 2 and "Traceback" not in result.output and "--min-pixels" in result.output, result.output


def test_eval_and_collect_take_the_image_pixel_limit(server: str, photo: Path, tmp_path: Path) -> None:
    data = one_question(photo.parent, photo)  # photo.jpg is 1200x900 = 1,080,000 pixels
    for command in (["eval", "--api", server, "--model", "m"], ["collect", "--policy", "oracle"]):
        result = runner.invoke(app, [*command, "--data", f"jsonl:{data}", "--image-pixel-limit", "1000000", "--out", str(tmp_path / command[0])])
        assert result.exit_code == 2, result.output
        assert "over the limit of 1,000,000 pixels; raise --image-pixel-limit" in result.output, result.output
        assert "Traceback" not in result.output


def test_collect_reports_a_bad_data_file_in_one_line(tmp_path: Path) -> None:
    data = tmp_path / "data.jsonl"
    data.write_text('{"id": "x", "image": "gone.jpg", "question": "q", "answer": "a"}\n')
    result = runner.invoke(app, ["collect", "--data", f"jsonl:{data}", "--out", str(tmp_path / "c")])
    assert result.exit_code == 2 and "Traceback" not in result.output and "gone.jpg" in result.output, result.output


def test_collect_reports_bad_settings_in_one_line(tmp_path: Path) -> None:
    data = tmp_path / "data.jsonl"
    data.write_text("")
    for options, words in ((["--policy", "api"], "--policy api needs --api URL and --model NAME"),
                           (["--policy", "local"], "--policy local needs --model-path"),
                           (["--rounds", "0"], "rounds must be at least 1")):
        result = runner.invoke(app, ["collect", "--data", f"jsonl:{data}", "--out", str(tmp_path / "c"), *options])
        assert result.exit_code == 2 and "Traceback" not in result.output and words in result.output, result.output


def test_rl_settings_that_do_not_fit_are_one_line_and_exit_2(tmp_path: Path) -> None:
    for sets, words in ((["temperature=0.7"], "old_logprobs: rollout needs"), (["micro_batch_size=3"], "micro_batch_size")):
        args = ["rl", "--data", "synthetic:x", "--model-path", str(tmp_path / "m"), "--out", str(tmp_path / "o")]
        result = CliRunner().invoke(app, args + [item for entry in sets for item in ("--set", entry)])
        assert result.exit_code == 2 and words in result.output and "Traceback" not in result.output, result.output


@pytest.mark.parametrize(
    "args, words",
    [
        (["serve", "--model-path", "{missing}"], "does not exist"),
        (["search", "{image}", "q", "--model-path", "{missing}"], "does not exist"),
        (["sft", "--data", "{missing}", "--model-path", "{missing}", "--out", "{out}"], "does not exist"),
        (["rl", "--data", "{missing}", "--model-path", "{missing}", "--out", "{out}"], "dataset path not found"),
        (["serve", "--model-path", "{broken}"], "cannot read the episode settings"),
    ],
    ids=["serve-missing", "search-missing", "sft-missing", "rl-missing-data", "serve-broken-settings"],
)
def test_a_missing_checkpoint_or_dataset_is_one_line_and_exit_2(tmp_path, args, words):
    Image.new("RGB", (64, 64)).save(tmp_path / "img.png")
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "mini_o3_episode.json").write_text("{bad")
    paths = {"missing": tmp_path / "nope", "image": tmp_path / "img.png", "out": tmp_path / "out", "broken": tmp_path / "broken"}
    result = CliRunner().invoke(app, [arg.format(**paths) for arg in args])
    assert result.exit_code == 2, result.output
    assert words in result.output and result.exception is None or isinstance(result.exception, SystemExit)
