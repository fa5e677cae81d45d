"""Scatter plots as inline SVG: no script, no network, readable in any browser."""

from __future__ import annotations

import math
from dataclasses import dataclass
from html import escape

WIDTH, HEIGHT, MARGIN = 460, 320, 56


@dataclass(frozen=True)
class Point:
    """One dot: position, tooltip, and its role (trial, feasible, front, chosen, original)."""

    x: float
    y: float
    label: str
    role: str = "trial"


_STYLE = {  # role -> (radius, fill, stroke)
    "trial": (4, "#c8c8c8", "#8a8a8a"),
    "feasible": (4.5, "#6fa8dc", "#1f5f9f"),
    "front": (6, "#f6b26b", "#b45f06"),
    "chosen": (8, "#e06666", "#660000"),
    "original": (7, "#000000", "#000000"),
}


def _ticks(low: float, high: float, count: int = 5) -> list[float]:
    span = high - low or abs(high) or 1.0
    step = 10 ** math.floor(math.log10(span / count))
    step *= next(f for f in (1, 2, 5, 10) if span / (step * f) <= count)
    first = math.ceil(low / step) * step
    return [first + i * step for i in range(int((high - first) / step) + 1)]


def scatter(points: list[Point], x_title: str, y_title: str, plot_id: str) -> str:
    """An SVG scatter of ``points`` with axes, ticks and a title on each dot."""
    if not points:
        return f'<p class="empty" id="{plot_id}">no measured trial yet</p>'
    xs, ys = [p.x for p in points], [p.y for p in points]
    x_low, x_high = _padded(min(xs), max(xs))
    y_low, y_high = _padded(min(ys), max(ys))

    def sx(x: float) -> float:
        return MARGIN + (x - x_low) / (x_high - x_low) * (WIDTH - 1.5 * MARGIN)

    def sy(y: float) -> float:
        return HEIGHT - MARGIN - (y - y_low) / (y_high - y_low) * (HEIGHT - 1.5 * MARGIN)

    parts = [
        f'<svg id="{plot_id}" class="plot" xmlns="http://www.w3.org/2000/svg" '
        f'width="{WIDTH}" height="{HEIGHT}" viewBox="0 0 {WIDTH} {HEIGHT}">'
    ]
    bottom, left = HEIGHT - MARGIN, MARGIN
    parts.append(
        f'<line x1="{left}" y1="{bottom}" x2="{WIDTH - MARGIN / 2}" y2="{bottom}" stroke="#333"/>'
    )
    parts.append(f'<line x1="{left}" y1="{bottom}" x2="{left}" y2="{MARGIN / 2}" stroke="#333"/>')
    for tick in _ticks(x_low, x_high):
        parts.append(
            f'<text x="{sx(tick):.1f}" y="{bottom + 16}" font-size="10" '
            f'text-anchor="middle">{tick:g}</text>'
        )
    for tick in _ticks(y_low, y_high):
        parts.append(
            f'<text x="{left - 6}" y="{sy(tick) + 3:.1f}" font-size="10" '
            f'text-anchor="end">{tick:g}</text>'
        )
    parts.append(
        f'<text x="{(WIDTH + MARGIN) / 2:.0f}" y="{HEIGHT - 14}" font-size="12" '
        f'text-anchor="middle">{escape(x_title)}</text>'
    )
    parts.append(
        f'<text x="14" y="{HEIGHT / 2:.0f}" font-size="12" text-anchor="middle" '
        f'transform="rotate(-90 14 {HEIGHT / 2:.0f})">{escape(y_title)}</text>'
    )
    order = ("trial", "feasible", "front", "original", "chosen")
    for point in sorted(points, key=lambda p: order.index(p.role)):
        radius, fill, stroke = _STYLE[point.role]
        parts.append(
            f'<circle class="{point.role}" cx="{sx(point.x):.1f}" cy="{sy(point.y):.1f}" '
            f'r="{radius}" fill="{fill}" stroke="{stroke}"><title>{escape(point.label)}'
            "</title></circle>"
        )
    parts.append("</svg>")
    return "".join(parts)


def legend() -> str:
    """The roles' colours, as one line of HTML."""
    names = {
        "original": "original",
        "chosen": "chosen",
        "front": "Pareto front",
        "feasible": "within budget",
        "trial": "over budget",
    }
    items = [
        f'<span class="key"><svg width="12" height="12"><circle cx="6" cy="6" r="5" '
        f'fill="{_STYLE[r][1]}" stroke="{_STYLE[r][2]}"/></svg> {names[r]}</span>'
        for r in names
    ]
    return '<p class="legend">' + " ".join(items) + "</p>"


def _padded(low: float, high: float) -> tuple[float, float]:
    pad = (high - low) * 0.08 or abs(high) * 0.1 or 1.0
    return low - pad, high + pad
