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
