"""Overlay rendering: a heatmap blended over the image, the box drawn, the prompt and score written."""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from handler.boxes import Box


def _jet_lut() -> np.ndarray:
    """256x3 uint8 jet colormap (matplotlib's, computed once per call: cheap, and no import-time work)."""
    from matplotlib import colormaps

    return (colormaps["jet"](np.linspace(0.0, 1.0, 256))[:, :3] * 255).astype(np.uint8)


def colorize(heatmap: np.ndarray) -> Image.Image:
    """``(H, W)`` heatmap in [0, 1] -> RGB jet image."""
    index = (np.clip(heatmap, 0.0, 1.0) * 255).astype(np.uint8)
    return Image.fromarray(_jet_lut()[index])


def render_overlay(
    image: Image.Image,
    heatmap: np.ndarray,
    box: Box | None = None,
    label: str | None = None,
    alpha: float = 0.5,
) -> Image.Image:
    """Blend the jet-coloured ``(H, W)`` heatmap over ``image`` (same size), draw ``box`` and ``label``."""
    base = image.convert("RGB")
    if heatmap.shape != (base.height, base.width):
        raise ValueError(f"heatmap shape {heatmap.shape} does not match image size {base.size}")
    out = Image.blend(base, colorize(heatmap), alpha)
    draw = ImageDraw.Draw(out)
    line = max(2, round(min(out.size) / 150))
    if box is not None:
        x0, y0, x1, y1 = box
        draw.rectangle((x0, y0, max(x0, x1 - 1), max(y0, y1 - 1)), outline=(255, 255, 255), width=line + 2)
        draw.rectangle((x0, y0, max(x0, x1 - 1), max(y0, y1 - 1)), outline=(0, 200, 0), width=line)
    if label:
        font = ImageFont.load_default(size=max(12, round(min(out.size) / 25)))
        left, top, right, bottom = draw.textbbox((0, 0), label, font=font)
        draw.rectangle((0, 0, right - left + 8, bottom - top + 8), fill=(0, 0, 0))
        draw.text((4 - left, 4 - top), label, fill=(255, 255, 255), font=font)
    return out
