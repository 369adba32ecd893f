"""Picture layout (NumPy + PIL): readable text, title bands, colour legends and panels on one canvas.

Every picture the project writes is assembled here, so that all share one look: a white canvas at least
``MIN_WIDTH`` pixels wide, a title band wrapped to the canvas width (text is measured, never clipped), panels
with their title in a band above them, and a legend of colour swatches with the class names beside them.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageFont

MIN_WIDTH = 800  # the whole picture
MIN_BEV = 256  # each BEV panel (both sides)
MIN_CAMERA_WIDTH = 200  # each camera tile: small model inputs are scaled up (nearest neighbour)
MAX_CAMERA_WIDTH = 400  # each camera tile: full-size camera images are scaled down (smoothly)
FONT_SIZE = 15
TITLE_FONT_SIZE = 17
BACKGROUND = (255, 255, 255)
TEXT = (0, 0, 0)
GAP = 8  # between panels
MARGIN = 8  # around the canvas

Colour = tuple[int, int, int]


@functools.lru_cache(maxsize=8)
def font(size: int = FONT_SIZE):
    """Pillow's bundled scalable font at ``size`` pixels (its small bitmap font where FreeType is missing)."""
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, ImportError, OSError, AttributeError):  # Pillow < 10.1 or built without FreeType
        return ImageFont.load_default()


def text_width(text: str, size: int = FONT_SIZE) -> int:
    """Width in pixels of ``text`` drawn in ``font(size)``."""
    return math.ceil(font(size).getlength(text))


def line_height(size: int = FONT_SIZE) -> int:
    """Height in pixels of one line of ``font(size)`` (ascenders to descenders) plus line spacing."""
    f = font(size)
    if hasattr(f, "getmetrics"):
        ascent, descent = f.getmetrics()
        return ascent + descent + 2
    return f.getbbox("Ag|")[3] + 2


def wrap_text(text: str, width: int, size: int = FONT_SIZE) -> list[str]:
    """``text`` broken into lines no wider than ``width`` pixels: at spaces, inside a word only where the word
    alone is too wide; ``\\n`` starts a new line."""
    width = max(width, text_width("W", size))
    lines: list[str] = []
    for paragraph in text.split("\n"):
        line = ""
        for word in paragraph.split(" "):
            candidate = f"{line} {word}" if line else word
            if text_width(candidate, size) <= width:
                line = candidate
                continue
            if line:
                lines.append(line)
            while text_width(word, size) > width:  # one word wider than the line: break it
                cut = max((k for k in range(2, len(word)) if text_width(word[:k], size) <= width), default=1)
                lines.append(word[:cut])
                word = word[cut:]
            line = word
        lines.append(line)
    return lines


def text_band(
    text: str, width: int, size: int = FONT_SIZE, colour: Colour = TEXT, background: Colour = BACKGROUND,
    pad: int = 3,
) -> np.ndarray:  # fmt: skip
    """[h, width, 3] uint8: ``text`` wrapped to ``width`` (less ``pad`` either side), left-aligned."""
    lines = wrap_text(text, width - 2 * pad, size)
    step = line_height(size)
    pil = Image.new("RGB", (width, len(lines) * step + 2 * pad), background)
    draw = ImageDraw.Draw(pil)
    for k, line in enumerate(lines):
        draw.text((pad, pad + k * step), line, fill=colour, font=font(size))
    return np.asarray(pil)


def titled(image: np.ndarray, text: str, size: int = FONT_SIZE, band: int = 0) -> np.ndarray:
    """The picture with ``text`` in a band (at least ``band`` pixels high) above it, wrapped to the picture's
    width (never clipped)."""
    image = np.asarray(image, np.uint8)
    top = text_band(text, image.shape[1], size)
    return np.concatenate([pad_to(top, height=band), image], 0)


def titled_row(panels: Sequence[np.ndarray], titles: Sequence[str], gap: int = GAP) -> np.ndarray:
    """Pictures side by side, each with its title above it; title bands of equal height, so that the pictures
    line up."""
    band = max(text_band(t, p.shape[1]).shape[0] for p, t in zip(panels, titles, strict=True))
    return hstack([titled(p, t, band=band) for p, t in zip(panels, titles, strict=True)], gap)


def scale_factor(size: int, target: int) -> int:
    """The smallest integer factor that brings ``size`` pixels to at least ``target`` (1 if already there)."""
    return max(1, math.ceil(target / max(size, 1)))


def upscale(image: np.ndarray, factor: int) -> np.ndarray:
    """Nearest-neighbour enlargement by an integer ``factor`` (label maps stay crisp, cells stay square)."""
    if factor <= 1:
        return np.asarray(image)
    return np.repeat(np.repeat(np.asarray(image), factor, 0), factor, 1)


def resize_width(image: np.ndarray, width: int, smooth: bool = True) -> np.ndarray:
    """Resize to ``width`` columns keeping the aspect ratio; ``smooth`` (photographs being shrunk) or nearest
    neighbour (label maps)."""
    image = np.ascontiguousarray(image)
    h, w = image.shape[:2]
    if w == width:
        return image
    height = max(1, round(h * width / w))
    method = Image.LANCZOS if smooth else Image.NEAREST
    return np.asarray(Image.fromarray(image).resize((width, height), method))


def readable_camera(image: np.ndarray, smooth: bool = True) -> tuple[np.ndarray, str]:
    """A camera picture at a readable width (``MIN_CAMERA_WIDTH`` .. ``MAX_CAMERA_WIDTH``): a small one
    enlarged by an integer factor (nearest neighbour: its pixels as the model saw them), a large one shrunk
    (``smooth``). Returns the picture and how it was scaled ('', 'x3', '1/4')."""
    w = image.shape[1]
    if w < MIN_CAMERA_WIDTH:
        k = scale_factor(w, MIN_CAMERA_WIDTH)
        return upscale(image, k), f"x{k}"
    if w > MAX_CAMERA_WIDTH:
        return resize_width(image, MAX_CAMERA_WIDTH, smooth), f"1/{w / MAX_CAMERA_WIDTH:.3g}"
    return np.asarray(image), ""


def pad_to(image: np.ndarray, height: int = 0, width: int = 0, background: Colour = BACKGROUND,
           center: bool = True) -> np.ndarray:  # fmt: skip
    """The picture on a ``background`` canvas of at least ``height`` x ``width`` (centred horizontally or
    left-aligned; top-aligned)."""
    h, w = image.shape[:2]
    dh, dw = max(0, height - h), max(0, width - w)
    left = dw // 2 if center else 0
    out = np.empty((h + dh, w + dw, 3), np.uint8)
    out[...] = background
    out[:h, left : left + w] = image
    return out


def hstack(images: Sequence[np.ndarray], gap: int = GAP, background: Colour = BACKGROUND) -> np.ndarray:
    """Pictures side by side, top-aligned, ``gap`` pixels apart."""
    height = max(a.shape[0] for a in images)
    parts = []
    for k, a in enumerate(images):
        if k and gap:
            parts.append(np.full((height, gap, 3), background, np.uint8))
        parts.append(pad_to(a, height=height, background=background, center=False))
    return np.concatenate(parts, 1)


def vstack(images: Sequence[np.ndarray], gap: int = GAP, width: int = 0, background: Colour = BACKGROUND,
           center: bool = True) -> np.ndarray:  # fmt: skip
    """Pictures one above the other, ``gap`` pixels apart, on a canvas at least ``width`` wide."""
    width = max([width] + [a.shape[1] for a in images])
    parts = []
    for k, a in enumerate(images):
        if k and gap:
            parts.append(np.full((gap, width, 3), background, np.uint8))
        parts.append(pad_to(a, width=width, background=background, center=center))
    return np.concatenate(parts, 0)


def grid_of(
    tiles: Sequence[np.ndarray], cols: int, gap: int = 4, titles: Sequence[str] | None = None
) -> np.ndarray:
    """Tiles in rows of ``cols`` (left to right, top to bottom), each under its title when ``titles`` given."""
    cols = max(1, min(cols, len(tiles)))
    rows = []
    for s in range(0, len(tiles), cols):
        row = tiles[s : s + cols]
        rows.append(hstack(row, gap) if titles is None else titled_row(row, titles[s : s + cols], gap))
    return vstack(rows, gap, center=False)


# Legends ----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LegendItem:
    """One legend entry as laid out: its swatch box (x0, y0, x1, y1, inclusive) and where its name starts."""

    name: str
    colour: Colour
    swatch: tuple[int, int, int, int]
    text_xy: tuple[int, int]


def legend_layout(
    entries: Sequence[tuple[str, Colour]], width: int, size: int = FONT_SIZE, heading: str = ""
) -> tuple[list[LegendItem], int, list[str]]:
    """Places ``entries`` (name, colour) left to right in rows no wider than ``width``: a square swatch, then
    the name. Returns the items, the height and the heading's lines (wrapped to ``width``, above the items)."""
    pad, swatch, spacing = 4, size, 18
    step = max(line_height(size), swatch + 4)
    heading_lines = wrap_text(heading, width - 2 * pad, size) if heading else []
    y = pad + len(heading_lines) * line_height(size)
    x = pad
    items = []
    for name, colour in entries:
        label = wrap_text(name, width - 2 * pad - swatch - 6, size)[0]  # a name wider than the canvas: cut
        w = swatch + 6 + text_width(label, size)
        if x > pad and x + w > width - pad:
            x, y = pad, y + step
        top = y + (step - swatch) // 2 - 1
        items.append(LegendItem(name, tuple(int(c) for c in colour), (x, top, x + swatch - 1, top + swatch - 1),
                                (x + swatch + 6, y)))  # fmt: skip
        x += w + spacing
    height = (y + step if items else y) + pad
    return items, height, heading_lines


def legend(
    entries: Sequence[tuple[str, Colour]], width: int, size: int = FONT_SIZE, heading: str = ""
) -> np.ndarray:
    """[h, width, 3] uint8 legend: each colour as a swatch (with a thin grey border, so that black and white
    swatches show) and its name beside it, after an optional ``heading`` line."""
    items, height, heading_lines = legend_layout(entries, width, size, heading)
    pil = Image.new("RGB", (width, height), BACKGROUND)
    draw = ImageDraw.Draw(pil)
    for k, line in enumerate(heading_lines):
        draw.text((4, 4 + k * line_height(size)), line, fill=TEXT, font=font(size))
    for item in items:
        x0, y0, x1, y1 = item.swatch
        draw.rectangle([x0 - 1, y0 - 1, x1 + 1, y1 + 1], outline=(128, 128, 128))
        draw.rectangle([x0, y0, x1, y1], fill=item.colour)
        label = wrap_text(item.name, width - 8 - (x1 - x0 + 1) - 6, size)[0]
        draw.text(item.text_xy, label, fill=TEXT, font=font(size))
    return np.asarray(pil)


def figure(
    blocks: Sequence[np.ndarray],
    title: str = "",
    legends: Sequence[tuple[str, Sequence[tuple[str, Colour]]]] = (),
    min_width: int = MIN_WIDTH,
) -> np.ndarray:
    """One picture: ``title`` (wrapped to the width), the ``blocks`` one below the other (centred), then the
    ``legends`` ((heading, [(name, colour), ...]), ...), on a white canvas at least ``min_width`` wide."""
    inner = max([min_width - 2 * MARGIN] + [b.shape[1] for b in blocks])
    parts = []
    if title:
        parts.append(text_band(title, inner, TITLE_FONT_SIZE))
    parts.extend(blocks)
    parts.extend(legend(entries, inner, heading=heading) for heading, entries in legends)
    body = vstack(parts, GAP, inner)
    out = np.empty((body.shape[0] + 2 * MARGIN, body.shape[1] + 2 * MARGIN, 3), np.uint8)
    out[...] = BACKGROUND
    out[MARGIN:-MARGIN, MARGIN:-MARGIN] = body
    return out
