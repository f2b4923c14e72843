"""Pictures for people: the original with every zoom box drawn and numbered."""

from __future__ import annotations

from PIL import Image, ImageDraw, ImageFont

from mini_o3.agent.trajectory import Trajectory

PALETTE = [(230, 25, 75), (60, 180, 75), (0, 130, 200), (245, 130, 48), (145, 30, 180), (70, 240, 240), (240, 50, 230), (210, 245, 60)]


def draw_zoom_boxes(original: Image.Image, trajectory: Trajectory, max_side: int = 1600) -> Image.Image:
    """A copy of `original`, scaled to `max_side`, with box i drawn and labelled i for observation_i."""
    scale = min(1.0, max_side / max(original.size))
    size = (max(1, round(original.width * scale)), max(1, round(original.height * scale)))
    canvas = original.convert("RGB").resize(size, Image.Resampling.BILINEAR)
    draw = ImageDraw.Draw(canvas)
    line = max(2, round(max(size) / 400))
    font = ImageFont.load_default(size=max(12, round(max(size) / 50)))
    for view in trajectory.views[1:]:
        colour = PALETTE[(view.index - 1) % len(PALETTE)]
        x0, y0, x1, y1 = (round(v * scale) for v in view.box)
        draw.rectangle((x0, y0, max(x0 + 1, x1), max(y0 + 1, y1)), outline=colour, width=line)
        label = str(view.index)
        text_box = draw.textbbox((x0, y0), label, font=font)
        draw.rectangle((text_box[0] - 2, text_box[1] - 2, text_box[2] + 2, text_box[3] + 2), fill=colour)
        draw.text((x0, y0), label, fill=(255, 255, 255), font=font)
    return canvas
