"""The registry of backbone families: every supported `Backbone`, and the one a checkpoint or model is.

The family modules (`qwen2_5_vl`, `qwen3_vl`, `qwen3_5`) build their `Backbone` from
`models.backbone`; this module sits above them, so imports flow one way.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from mini_o3.models import qwen2_5_vl, qwen3_5, qwen3_vl
from mini_o3.models.backbone import Backbone, CheckpointError


def backbones() -> dict[str, Backbone]:
    """Every supported family by name, in the order they came out."""
    return {family.BACKBONE.name: family.BACKBONE for family in (qwen2_5_vl, qwen3_vl, qwen3_5)}


def backbone_named(name: str) -> Backbone:
    """The family called `name` (qwen2.5-vl, qwen3-vl, qwen3.5); also accepts a `model_type`."""
    known = backbones()
    if name in known:
        return known[name]
    for backbone in known.values():
        if name in backbone.model_types:
            return backbone
    raise ValueError(f"unknown model family {name!r}; supported: {', '.join(known)}")


def backbone_for_model_type(model_type: str | None, where: str = "the checkpoint") -> Backbone:
    """The family whose config.json says `model_type`."""
    for backbone in backbones().values():
        if model_type in backbone.model_types:
            return backbone
    supported = ", ".join(f"{backbone.name} ({'/'.join(backbone.model_types)})" for backbone in backbones().values())
    raise CheckpointError(f"{where} is a {model_type!r} model; mini-o3 supports {supported}")


def read_backbone(directory: str | Path) -> Backbone:
    """The family of the checkpoint in `directory`, from its config.json."""
    path = Path(directory) / "config.json"
    try:
        model_type = json.loads(path.read_text()).get("model_type")
    except (OSError, ValueError) as error:
        raise CheckpointError(f"cannot read {path}: {error}") from error
    return backbone_for_model_type(model_type, f"checkpoint {directory}")


def backbone_of(model: Any) -> Backbone:
    """The family of a loaded model, from its config."""
    return backbone_for_model_type(getattr(getattr(model, "config", None), "model_type", None), type(model).__name__)
