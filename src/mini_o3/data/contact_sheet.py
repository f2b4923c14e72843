"""Look at a data set: a PNG contact sheet and an HTML page of samples with their boxes drawn.

Each sample becomes a panel: the whole image scaled down with the boxes its question refers
to (a ring marks boxes too small to see at that scale), beside a close-up of the target's
surroundings at up to full resolution, then the question, the options and the answer.
Colours: target red, anchor orange, frame blue, counted objects magenta, near-identical
distractors yellow (when the record lists them). Works for any Sample with boxes; synthetic
records carry roles in `meta["referents"]`.
"""

from __future__ import annotations

import html
import textwrap
from pathlib import Path
from typing import Any, Iterable

from PIL import Image, ImageDraw, ImageFont

from mini_o3.agent.sample import Sample
from mini_o3.agent.images import open_image

ROLE_COLOURS = {
    "target": (230, 25, 40),
    "anchor": (255, 140, 0),
    "frame": (30, 90, 255),
    "counted": (230, 0, 230),
    "near_distractor": (255, 225, 0),
}


def _roles(sample: Sample) -> list[tuple[str, tuple[float, float, float, float]]]:
    referents = sample.meta.get("referents") if isinstance(sample.meta, dict) else None
    marked: list[tuple[str, tuple[float, float, float, float]]] = []
    if isinstance(referents, list) and referents:
        marked = [(str(r.get("role", "target")), tuple(r["box"])) for r in referents if isinstance(r, dict) and "box" in r]
    else:
        marked = [("target", tuple(box)) for box in sample.boxes]
    near = sample.meta.get("near_distractors") if isinstance(sample.meta, dict) else None
    if isinstance(near, list):
        marked += [("near_distractor", tuple(d["box"])) for d in near if isinstance(d, dict) and "box" in d]
    return marked  # type: ignore[return-value]


def _draw_boxes(image: Image.Image, marked: list[tuple[str, tuple[float, float, float, float]]], scale: float, offset: tuple[float, float] = (0, 0)) -> None:
    draw = ImageDraw.Draw(image)
    line = max(2, round(max(image.size) / 250))
    for role, box in sorted(marked, key=lambda item: item[0] != "near_distractor"):
        colour = ROLE_COLOURS.get(role, (255, 255, 255))
        x0, y0 = (box[0] - offset[0]) * scale, (box[1] - offset[1]) * scale
        x1, y1 = (box[2] - offset[0]) * scale, (box[3] - offset[1]) * scale
        width = 1 if role == "near_distractor" else line
        pad = width + 1
        draw.rectangle((x0 - pad, y0 - pad, x1 + pad, y1 + pad), outline=colour, width=width)
        if role != "frame" and max(x1 - x0, y1 - y0) < 12:
            # Too small to see: ring it.
            cx, cy, radius = (x0 + x1) / 2, (y0 + y1) / 2, 14 if role != "near_distractor" else 9
            draw.ellipse((cx - radius, cy - radius, cx + radius, cy + radius), outline=colour, width=width)


def _closeup_box(marked: list[tuple[str, tuple[float, float, float, float]]], width: int, height: int) -> tuple[int, int, int, int]:
    focus = [box for role, box in marked if role not in ("near_distractor", "frame")] or [box for _, box in marked]
    if not focus:
        return (0, 0, width, height)
    x0, y0 = min(b[0] for b in focus), min(b[1] for b in focus)
    x1, y1 = max(b[2] for b in focus), max(b[3] for b in focus)
    side = max(128.0, 4 * max(x1 - x0, y1 - y0))
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    left = min(max(0.0, cx - side / 2), max(0.0, width - side))
    top = min(max(0.0, cy - side / 2), max(0.0, height - side))
    return (int(left), int(top), int(min(width, left + side)), int(min(height, top + side)))


def draw_panel(sample: Sample, thumb: int = 480) -> Image.Image:
    """The overview and the close-up of one sample, side by side, boxes drawn."""
    original = open_image(sample.image)
    marked = _roles(sample)
    scale = thumb / max(original.size)
    overview = original.resize((max(1, round(original.width * scale)), max(1, round(original.height * scale))), Image.Resampling.BILINEAR, reducing_gap=2.0)
    _draw_boxes(overview, marked, scale)
    crop_box = _closeup_box(marked, original.width, original.height)
    crop = original.crop(crop_box)
    crop_scale = thumb / max(crop.size)
    closeup = crop.resize((max(1, round(crop.width * crop_scale)), max(1, round(crop.height * crop_scale))), Image.Resampling.NEAREST if crop_scale > 1 else Image.Resampling.LANCZOS)
    _draw_boxes(closeup, marked, crop_scale, crop_box[:2])
    panel = Image.new("RGB", (2 * thumb + 8, thumb), (255, 255, 255))
    panel.paste(overview, (0, 0))
    panel.paste(closeup, (thumb + 8, 0))
    return panel


def _caption(sample: Sample) -> list[str]:
    lines = [f"{sample.id}  [{sample.category or sample.source}]"]
    for paragraph in sample.question.split("\n"):
        lines += textwrap.wrap(paragraph, 110) or [""]
    answer = sample.answer + (f" ({sample.options[sample.answer]})" if sample.answer in sample.options else "")
    lines.append(f"answer: {answer}")
    figures = sample.meta.get("figures") if isinstance(sample.meta, dict) else None
    if isinstance(figures, dict):
        lines.append(
            "  ".join(
                f"{key}={figures[key]:.4g}" if isinstance(figures[key], float) else f"{key}={figures[key]}"
                for key in ("target_side_fraction", "near_distractors", "magnification_needed", "zooms_needed", "legible_first_view")
                if key in figures
            )
        )
    return lines


def write_contact_sheet(samples: Iterable[Sample], out_dir: str | Path, columns: int = 2, thumb: int = 480) -> tuple[Path, Path]:
    """Write out_dir/contact_sheet.png and out_dir/index.html (panels under out_dir/sheet/); their paths."""
    out = Path(out_dir)
    (out / "sheet").mkdir(parents=True, exist_ok=True)
    samples = list(samples)
    font = ImageFont.load_default(size=14)
    line_height = 18
    tiles: list[Image.Image] = []
    rows_html: list[str] = []
    for number, sample in enumerate(samples):
        panel = draw_panel(sample, thumb)
        name = f"sheet/{number:04d}.jpg"
        panel.save(out / name, quality=90)
        caption = _caption(sample)
        tile = Image.new("RGB", (panel.width, panel.height + 8 + line_height * len(caption)), (255, 255, 255))
        tile.paste(panel, (0, 0))
        draw = ImageDraw.Draw(tile)
        for i, line in enumerate(caption):
            draw.text((4, panel.height + 4 + i * line_height), line, fill=(0, 0, 0), font=font)
        tiles.append(tile)
        rows_html.append(_panel_html(sample, name))
    sheet_path, page_path = out / "contact_sheet.png", out / "index.html"
    if tiles:
        cell_w = max(t.width for t in tiles) + 16
        cell_h = max(t.height for t in tiles) + 16
        rows = (len(tiles) + columns - 1) // columns
        sheet = Image.new("RGB", (cell_w * min(columns, len(tiles)), cell_h * rows), (235, 235, 235))
        for i, tile in enumerate(tiles):
            sheet.paste(tile, ((i % columns) * cell_w + 8, (i // columns) * cell_h + 8))
        sheet.save(sheet_path, compress_level=3)
    page_path.write_text(_page(rows_html), encoding="utf-8")
    return sheet_path, page_path


def _panel_html(sample: Sample, image: str) -> str:
    options = "".join(f"<li><b>{html.escape(k)}</b> {html.escape(v)}</li>" for k, v in sample.options.items())
    figures: Any = sample.meta.get("figures") if isinstance(sample.meta, dict) else None
    table = ""
    if isinstance(figures, dict):
        table = "<table>" + "".join(f"<tr><td>{html.escape(str(k))}</td><td>{html.escape(str(v))}</td></tr>" for k, v in figures.items()) + "</table>"
    return (
        f'<section><h3>{html.escape(sample.id)} <small>{html.escape(sample.category)}</small></h3>'
        f'<img src="{html.escape(image)}" alt="{html.escape(sample.id)}">'
        f"<pre>{html.escape(sample.question)}</pre>"
        + (f"<ul>{options}</ul>" if options else "")
        + f"<p>answer: <b>{html.escape(sample.answer)}</b></p>{table}</section>"
    )


def _page(rows: list[str]) -> str:
    style = (
        "body{font-family:sans-serif;margin:16px;background:#f4f4f4}section{background:#fff;margin:0 0 16px;padding:12px}"
        "img{max-width:100%}pre{white-space:pre-wrap}table{font-size:12px;border-collapse:collapse}"
        "td{border:1px solid #ddd;padding:2px 6px}"
    )
    legend = " ".join(f'<span style="color:rgb{c}">&#9632; {r}</span>' for r, c in ROLE_COLOURS.items())
    return f"<!doctype html><meta charset=utf-8><title>samples</title><style>{style}</style><p>{legend}</p>" + "\n".join(rows)
