"""Small SVG line charts for bench reports: no plotting library, readable in any browser.

One figure is a grid of panels sharing the x axis (seconds into a run); shaded bands mark
time windows (injected faults), dashed lines mark moments (pattern changes).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from html import escape
from pathlib import Path

__all__ = ["Band", "Panel", "Series", "write_svg"]

COLOURS = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b")
PANEL_W, PANEL_H = 520, 190
MARGIN_L, MARGIN_R, MARGIN_T, MARGIN_B = 64, 16, 30, 34


@dataclass(frozen=True)
class Series:
    label: str
    values: Sequence[float | None]  # None: no figure for that row (a gap in the line)


@dataclass(frozen=True)
class Panel:
    title: str
    unit: str
    series: Sequence[Series]
    floor_zero: bool = True  # flat-looking series keep zero on the axis so noise stays small


@dataclass(frozen=True)
class Band:
    start: float
    end: float
    label: str


@dataclass
class _Canvas:
    parts: list[str] = field(default_factory=list)

    def add(self, text: str) -> None:
        self.parts.append(text)


def _nice_ceiling(value: float) -> float:
    if value <= 0:
        return 1.0
    magnitude = 10.0 ** math.floor(math.log10(value))
    for step in (1, 2, 2.5, 5, 10):
        if value <= step * magnitude:
            return step * magnitude
    return 10 * magnitude


def _label(value: float) -> str:
    if value == 0:
        return "0"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    return f"{value:.3g}"


def write_svg(path: Path, title: str, x: Sequence[float], panels: Sequence[Panel], *,
              bands: Sequence[Band] = (), marks: Sequence[float] = (), columns: int = 2) -> None:
    """Write the panels as one SVG file; x is shared (seconds), one value per row."""
    rows = math.ceil(len(panels) / columns)
    width, height = columns * PANEL_W, rows * PANEL_H + 40
    canvas = _Canvas()
    canvas.add(f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
               f'font-family="sans-serif" font-size="11">')
    canvas.add(f'<rect width="{width}" height="{height}" fill="white"/>')
    canvas.add(f'<text x="{width / 2}" y="22" text-anchor="middle" font-size="15" '
               f'font-weight="bold">{escape(title)}</text>')
    x_max = max(x) if x else 1.0
    for index, panel in enumerate(panels):
        left = (index % columns) * PANEL_W + MARGIN_L
        top = 40 + (index // columns) * PANEL_H + MARGIN_T
        inner_w = PANEL_W - MARGIN_L - MARGIN_R
        inner_h = PANEL_H - MARGIN_T - MARGIN_B
        values = [v for s in panel.series for v in s.values if v is not None]
        low = 0.0 if panel.floor_zero or not values else min(values)
        high = _nice_ceiling(max(values) * 1.1) if values else 1.0
        if high <= low:
            high = low + 1.0

        def sx(value: float, left: float = left, inner_w: float = inner_w) -> float:
            return left + inner_w * value / x_max

        def sy(value: float, top: float = top, inner_h: float = inner_h,
               low: float = low, high: float = high) -> float:
            return top + inner_h * (1 - (value - low) / (high - low))

        canvas.add(f'<text x="{left}" y="{top - 10}" font-weight="bold">'
                   f'{escape(panel.title)} ({escape(panel.unit)})</text>')
        for band in bands:
            x0, x1 = sx(band.start), sx(min(band.end, x_max))
            canvas.add(f'<rect x="{x0:.1f}" y="{top}" width="{max(x1 - x0, 2):.1f}" '
                       f'height="{inner_h}" fill="#f4c7c3" opacity="0.6">'
                       f'<title>{escape(band.label)}</title></rect>')
            canvas.add(f'<text x="{x0 + 2:.1f}" y="{top + 11}" fill="#a33" font-size="9">'
                       f'{escape(band.label)}</text>')
        for mark in marks:
            canvas.add(f'<line x1="{sx(mark):.1f}" x2="{sx(mark):.1f}" y1="{top}" '
                       f'y2="{top + inner_h}" stroke="#999" stroke-dasharray="2,3"/>')
        for tick in range(5):
            value = low + (high - low) * tick / 4
            y = sy(value)
            canvas.add(f'<line x1="{left}" x2="{left + inner_w}" y1="{y:.1f}" y2="{y:.1f}" '
                       f'stroke="#eee"/>')
            canvas.add(f'<text x="{left - 6}" y="{y + 4:.1f}" text-anchor="end">'
                       f'{_label(value)}</text>')
        for tick in range(6):
            value = x_max * tick / 5
            canvas.add(f'<text x="{sx(value):.1f}" y="{top + inner_h + 14}" '
                       f'text-anchor="middle">{value / 60:.1f} min</text>')
        canvas.add(f'<rect x="{left}" y="{top}" width="{inner_w}" height="{inner_h}" '
                   'fill="none" stroke="#444"/>')
        for number, series in enumerate(panel.series):
            colour = COLOURS[number % len(COLOURS)]
            segments: list[list[str]] = [[]]
            for xv, yv in zip(x, series.values, strict=True):
                if yv is None:
                    segments.append([])
                else:
                    segments[-1].append(f"{sx(xv):.1f},{sy(yv):.1f}")
            for points in segments:
                if len(points) > 1:
                    canvas.add(f'<polyline fill="none" stroke="{colour}" stroke-width="1.6" '
                               f'points="{" ".join(points)}"/>')
                for point in points:
                    px, py = point.split(",")
                    canvas.add(f'<circle cx="{px}" cy="{py}" r="2" fill="{colour}"/>')
            legend_x = left + inner_w - 8 - 110 * (len(panel.series) - 1 - number)
            canvas.add(f'<text x="{legend_x}" y="{top - 10}" text-anchor="end" '
                       f'fill="{colour}">● {escape(series.label)}</text>')
    canvas.add("</svg>")
    path.write_text("\n".join(canvas.parts) + "\n")
