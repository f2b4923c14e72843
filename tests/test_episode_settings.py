"""A checkpoint remembers how it sees: mini_o3_episode.json, its precedence, and the committed base model's."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image
from typer.testing import CliRunner

from mini_o3.cli import app
from mini_o3.models.episode_settings import (
    DEFAULT_SETTINGS,
    EPISODE_FILE,
    EpisodeSettings,
    read_episode_settings,
    resolve_settings,
    write_episode_settings,
)
from mini_o3.train.config import RLJobConfig
from mini_o3.train.rl import rl_episode_settings
from mini_o3.train.sft import sft_episode_settings

BASE = Path(__file__).resolve().parents[1] / "checkpoints" / "base-tiny"
FIELDS = ("view_max_pixels", "view_min_pixels", "max_turns", "max_new_tokens", "numbering")


def test_the_committed_base_model_remembers_its_112_pixel_views() -> None:
    settings = read_episode_settings(BASE)
    pretrain = json.loads((BASE / "pretrain_config.json").read_text())
    assert settings.view_max_pixels == pretrain["view_px"] ** 2 == 112 * 112
    assert settings.view_min_pixels == 56 * 56 and settings.written_by == "pretrain"


@pytest.mark.slow
def test_search_on_the_committed_base_model_shows_it_its_training_views(tmp_path: Path) -> None:
    image = tmp_path / "big.png"
    Image.new("RGB", (1200, 900), (180, 180, 180)).save(image)
    runner = CliRunner()
    stored = runner.invoke(app, ["search", str(image), "What colour?", "--model-path", str(BASE), "--max-turns", "1",
                                 "--max-new-tokens", "8", "--seed", "0", "--out", str(tmp_path / "stored")])
    assert stored.exit_code == 0, stored.output
    assert f"view_max_pixels = 12544  ({BASE / EPISODE_FILE})" in stored.output and "max_turns = 1  (flag)" in stored.output
    shown = json.loads((tmp_path / "stored" / "trajectories.jsonl").read_text())["views"][0]["size"]
    assert shown[0] * shown[1] <= 112 * 112 and shown[0] > 100  # 1200x900 shown at about 129x96, not 2M pixels
    flagged = runner.invoke(app, ["search", str(image), "What colour?", "--model-path", str(BASE), "--max-turns", "1",
                                  "--max-new-tokens", "8", "--max-pixels", "200000", "--out", str(tmp_path / "flagged")])
    assert flagged.exit_code == 0 and "view_max_pixels = 200000  (flag)" in flagged.output
    shown = json.loads((tmp_path / "flagged" / "trajectories.jsonl").read_text())["views"][0]["size"]
    assert 150_000 < shown[0] * shown[1] <= 200_000


def test_a_flag_beats_the_file_which_beats_the_default(tmp_path: Path) -> None:
    write_episode_settings(tmp_path, EpisodeSettings(view_max_pixels=50_000, view_min_pixels=10_000, max_turns=7, numbering="consistent"))
    resolved = resolve_settings(tmp_path, FIELDS, max_turns=3, view_max_pixels=None)
    assert (resolved.settings.max_turns, resolved.settings.view_max_pixels, resolved.settings.numbering) == (3, 50_000, "consistent")
    assert resolved.sources["max_turns"] == "flag" and resolved.sources["view_max_pixels"] == str(tmp_path / EPISODE_FILE)
    plain = resolve_settings(tmp_path / "nothing", FIELDS)
    assert plain.settings == DEFAULT_SETTINGS and set(plain.sources.values()) == {"default"}
    lowered = resolve_settings(tmp_path, FIELDS, view_max_pixels=5_000)
    assert lowered.settings.view_min_pixels == 5_000 and "lowered" in lowered.sources["view_min_pixels"]
    with pytest.raises(ValueError, match="view_min_pixels"):
        resolve_settings(tmp_path, FIELDS, view_max_pixels=5_000, view_min_pixels=6_000)


def test_a_broken_file_is_named_and_unknown_keys_are_ignored(tmp_path: Path) -> None:
    (tmp_path / EPISODE_FILE).write_text("{not json")
    with pytest.raises(ValueError, match=EPISODE_FILE):
        read_episode_settings(tmp_path)
    (tmp_path / EPISODE_FILE).write_text(json.dumps({"view_max_pixels": 9_000, "view_min_pixels": 900, "from_the_future": 1}))
    assert read_episode_settings(tmp_path).view_max_pixels == 9_000
    (tmp_path / EPISODE_FILE).write_text(json.dumps({"numbering": "sideways"}))
    with pytest.raises(ValueError, match="numbering"):
        read_episode_settings(tmp_path)


def test_sft_takes_the_datas_settings_before_the_starting_checkpoints(tmp_path: Path) -> None:
    data, model = tmp_path / "data", tmp_path / "model"
    write_episode_settings(model, EpisodeSettings(view_max_pixels=20_000, view_min_pixels=1_000))
    assert sft_episode_settings(data, model).view_max_pixels == 20_000  # no file beside the data
    write_episode_settings(data, EpisodeSettings(view_max_pixels=30_000, view_min_pixels=1_000, max_turns=9))
    settings = sft_episode_settings(data, model)
    assert (settings.view_max_pixels, settings.max_turns, settings.written_by) == (30_000, 9, "sft")
    assert sft_episode_settings(tmp_path / "a", tmp_path / "b").view_max_pixels == DEFAULT_SETTINGS.view_max_pixels


def test_rl_writes_its_rollouts_settings_and_keeps_the_inference_budget(tmp_path: Path) -> None:
    write_episode_settings(tmp_path, EpisodeSettings(view_max_pixels=20_000, view_min_pixels=1_000, max_turns=12))
    job = RLJobConfig(model_path=str(tmp_path), image_max_pixels=12_544, image_min_pixels=3_136, max_turns=6, max_new_tokens=160)
    settings = rl_episode_settings(job)
    assert (settings.view_max_pixels, settings.view_min_pixels, settings.max_new_tokens) == (12_544, 3_136, 160)
    assert (settings.max_turns, settings.train_max_turns, settings.train_max_images, settings.written_by) == (12, 6, 12, "rl")
