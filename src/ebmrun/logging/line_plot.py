"""Line plots drawn with torch alone (matplotlib is not a dependency).

:func:`line_plot` draws a few named series on linear or log axes, with decade ticks, tick
labels, axis labels and a legend in a built-in 3×5 pixel font, and returns an RGB image
``(3, H, W)`` in [0, 1] for TensorBoard and PNG files. It is meant for diagnostic curves
(error vs iterations), not for publication figures.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

# 3×5 glyphs, one string of 15 bits per character (rows top to bottom).
_GLYPHS = {
    "0": "111101101101111", "1": "010110010010111", "2": "111001111100111",
    "3": "111001111001111", "4": "101101111001001", "5": "111100111001111",
    "6": "111100111101111", "7": "111001001001001", "8": "111101111101111",
    "9": "111101111001111", ".": "000000000000010", "-": "000000111000000",
    "A": "010101111101101", "B": "110101110101110", "C": "011100100100011",
    "D": "110101101101110", "E": "111100110100111", "F": "111100110100100",
    "G": "011100101101011", "H": "101101111101101", "I": "111010010010111",
    "J": "001001001101010", "K": "101101110101101", "L": "100100100100111",
    "M": "101111111101101", "N": "110101101101101", "O": "010101101101010",
    "P": "110101110100100", "Q": "010101101110011", "R": "110101110101101",
    "S": "011100010001110", "T": "111010010010010", "U": "101101101101111",
    "V": "101101101101010", "W": "101101111111101", "X": "101101010101101",
    "Y": "101101010010010", "Z": "111001010100111", " ": "000000000000000",
    "/": "001001010100100", "(": "010100100100010", ")": "010001001001010",
    "=": "000111000111000", "+": "000010111010000", ",": "000000000010100",
    "_": "000000000000111", ":": "000010000010000", "*": "000101010101000",
    "|": "010010010010010", "^": "010101000000000",
}
SCALE = 2  # pixels per glyph bit
PALETTE = [(0.12, 0.47, 0.71), (1.0, 0.50, 0.05), (0.17, 0.63, 0.17), (0.84, 0.15, 0.16),
           (0.58, 0.40, 0.74), (0.55, 0.34, 0.29)]


@dataclass
class Series:
    """One curve: points ``(xs[i], ys[i])``; ``markers`` draws a square at every point."""

    name: str
    xs: Sequence[float]
    ys: Sequence[float]
    markers: bool = False


def draw_text(image: Tensor, text: str, row: int, col: int,
              color: tuple[float, float, float] = (0.0, 0.0, 0.0)) -> None:
    """Write ``text`` (upper-cased; unknown characters become blanks) into ``image``
    ``(3, H, W)`` with its top-left corner at (row, col); clipped at the borders."""
    rgb = torch.tensor(color)[:, None]
    for k, char in enumerate(text.upper()):
        bits = _GLYPHS.get(char, _GLYPHS[" "])
        for i, bit in enumerate(bits):
            if bit == "1":
                r = row + (i // 3) * SCALE
                c = col + k * 4 * SCALE + (i % 3) * SCALE
                if 0 <= r <= image.shape[1] - SCALE and 0 <= c <= image.shape[2] - SCALE:
                    image[:, r:r + SCALE, c:c + SCALE] = rgb[:, :, None]


def text_width(text: str) -> int:
    return len(text) * 4 * SCALE - SCALE


def _tick_label(value: float) -> str:
    if 1 <= value < 1e5 and float(value).is_integer():
        return str(int(value))
    return f"1E{int(round(math.log10(value)))}"


def _log_ticks(low: float, high: float) -> list[float]:
    return [10.0 ** e for e in range(math.floor(math.log10(low)), math.ceil(math.log10(high)) + 1)
            if low <= 10.0 ** e * (1 + 1e-9) and 10.0 ** e <= high * (1 + 1e-9)]


def _linear_ticks(low: float, high: float, count: int = 5) -> list[float]:
    step = 10.0 ** math.floor(math.log10(max((high - low) / count, 1e-30)))
    for factor in (1, 2, 5, 10):
        if (high - low) / (step * factor) <= count:
            step *= factor
            break
    first = math.ceil(low / step) * step
    return [first + i * step for i in range(int((high - first) / step) + 1)]


def line_plot(series: Sequence[Series], *, log_x: bool = False, log_y: bool = False,
              x_label: str = "", y_label: str = "", width: int = 560, height: int = 360
              ) -> Tensor:
    """Plot ``series`` into an RGB image ``(3, height, width)`` in [0, 1].

    Non-finite points, and non-positive ones on a log axis, are dropped.
    """
    left, right, top, bottom = 64, 16, 28, 44
    image = torch.ones(3, height, width)
    clean = []
    for s in series:
        pts = [(float(x), float(y)) for x, y in zip(s.xs, s.ys, strict=True)
               if math.isfinite(x) and math.isfinite(y) and (x > 0 or not log_x)
               and (y > 0 or not log_y)]
        clean.append(pts)
    all_pts = [p for pts in clean for p in pts] or [(1.0, 1.0)]
    fx = (lambda v: math.log10(v)) if log_x else (lambda v: v)
    fy = (lambda v: math.log10(v)) if log_y else (lambda v: v)
    x_lo, x_hi = min(p[0] for p in all_pts), max(p[0] for p in all_pts)
    y_lo, y_hi = min(p[1] for p in all_pts), max(p[1] for p in all_pts)
    if log_y:  # whole decades: the tick labels then frame the data
        y_lo, y_hi = 10.0 ** math.floor(math.log10(y_lo)), 10.0 ** math.ceil(math.log10(y_hi))
    ax_x0, ax_x1 = fx(x_lo), fx(x_hi) if x_hi > x_lo else fx(x_lo) + 1
    ax_y0, ax_y1 = fy(y_lo), fy(y_hi) if y_hi > y_lo else fy(y_lo) + 1
    plot_w, plot_h = width - left - right, height - top - bottom

    def to_px(x: float, y: float) -> tuple[float, float]:
        col = left + (fx(x) - ax_x0) / (ax_x1 - ax_x0) * (plot_w - 1)
        row = top + (1 - (fy(y) - ax_y0) / (ax_y1 - ax_y0)) * (plot_h - 1)
        return row, col

    grey = torch.tensor([0.85, 0.85, 0.85])[:, None]
    for value in (_log_ticks if log_x else _linear_ticks)(x_lo, x_hi):
        _, c = to_px(value, y_lo if not log_y else y_lo)
        c = int(round(c))
        image[:, top:top + plot_h, c] = grey
        label = _tick_label(value) if log_x else f"{value:g}"
        draw_text(image, label, top + plot_h + 6, c - text_width(label) // 2)
    for value in (_log_ticks if log_y else _linear_ticks)(y_lo, y_hi):
        r, _ = to_px(x_lo, value)
        r = int(round(r))
        image[:, r, left:left + plot_w] = grey
        label = _tick_label(value) if log_y else f"{value:g}"
        draw_text(image, label, r - 5, left - 6 - text_width(label))
    image[:, top:top + plot_h, left] = 0.0  # axes frame
    image[:, top:top + plot_h, left + plot_w - 1] = 0.0
    image[:, top, left:left + plot_w] = 0.0
    image[:, top + plot_h - 1, left:left + plot_w] = 0.0
    draw_text(image, x_label, height - 14, left + (plot_w - text_width(x_label)) // 2)
    draw_text(image, y_label, 8, 8)

    for k, (s, pts) in enumerate(zip(series, clean, strict=True)):
        rgb = torch.tensor(PALETTE[k % len(PALETTE)])[:, None]
        px = torch.tensor([to_px(x, y) for x, y in pts]).reshape(-1, 2)
        if len(px) > 1:
            t = torch.linspace(0, 1, 64)[:, None, None]
            dense = (px[:-1] * (1 - t) + px[1:] * t).reshape(-1, 2).round().long()
            for dr, dc in ((0, 0), (1, 0), (0, 1), (1, 1)):  # 2-px thick lines
                r = (dense[:, 0] + dr).clamp(0, height - 1)
                c = (dense[:, 1] + dc).clamp(0, width - 1)
                image[:, r, c] = rgb
        if s.markers:
            for r, c in px.round().long().tolist():
                image[:, max(r - 3, 0):r + 4, max(c - 3, 0):c + 4] = rgb[:, :, None]
        # Bottom left: decreasing curves (errors vs iterations) leave that corner empty.
        legend_row = top + plot_h - 8 - 14 * (len(series) - k)
        legend_col = left + 12
        image[:, legend_row + 3:legend_row + 6, legend_col:legend_col + 16] = rgb[:, :, None]
        draw_text(image, s.name, legend_row, legend_col + 22)
    return image.clamp_(0, 1)
