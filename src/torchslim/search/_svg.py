"""Scatter plots, rooflines and bar charts as inline SVG: no script, no network, readable in
any browser."""

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
    parts += _axes()
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
    parts += _titles(x_title, y_title)
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


@dataclass(frozen=True)
class Roofs:
    """The roofline's roofs: memory bandwidth and one compute peak, and the plot's log ranges."""

    mem_bw_bytes_per_s: float
    peak_flops_per_s: float
    x_range: tuple[float, float]  # arithmetic intensity, FLOP/byte
    y_range: tuple[float, float]  # FLOP/s


def _decades(low: float, high: float) -> list[float]:
    return [10.0**k for k in range(math.ceil(math.log10(low)), math.floor(math.log10(high)) + 1)]


def _si(value: float) -> str:
    for factor, prefix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if value >= factor:
            return f"{value / factor:g}{prefix}"
    return f"{value:g}"


def roofline(points: list[Point], roofs: Roofs, plot_id: str, labelled: int = 4) -> str:
    """A log-log roofline: the memory roof, the compute roof, one dot per op (x: FLOP/byte,
    y: achieved FLOP/s); the ``labelled`` first points get their op's name beside them."""
    (x_low, x_high), (y_low, y_high) = roofs.x_range, roofs.y_range

    def sx(x: float) -> float:
        share = math.log10(x / x_low) / math.log10(x_high / x_low)
        return MARGIN + share * (WIDTH - 1.5 * MARGIN)

    def sy(y: float) -> float:
        share = math.log10(y / y_low) / math.log10(y_high / y_low)
        return HEIGHT - MARGIN - share * (HEIGHT - 1.5 * MARGIN)

    parts = [
        f'<svg id="{plot_id}" class="plot roofline" xmlns="http://www.w3.org/2000/svg" '
        f'width="{WIDTH}" height="{HEIGHT}" viewBox="0 0 {WIDTH} {HEIGHT}">',
        *_axes(),
    ]
    for tick in _decades(x_low, x_high):
        parts.append(f'<text x="{sx(tick):.1f}" y="{HEIGHT - MARGIN + 16}" font-size="10" '
                     f'text-anchor="middle">{_si(tick)}</text>')  # fmt: skip
    for tick in _decades(y_low, y_high):
        parts.append(f'<text x="{MARGIN - 6}" y="{sy(tick) + 3:.1f}" font-size="10" '
                     f'text-anchor="end">{_si(tick)}</text>')  # fmt: skip
    parts += _titles("arithmetic intensity (FLOP/byte)", "achieved FLOP/s")
    ridge = roofs.peak_flops_per_s / roofs.mem_bw_bytes_per_s
    memory_start = max(x_low, y_low / roofs.mem_bw_bytes_per_s)
    parts.append(
        f'<line class="roof-memory" x1="{sx(memory_start):.1f}" '
        f'y1="{sy(memory_start * roofs.mem_bw_bytes_per_s):.1f}" x2="{sx(ridge):.1f}" '
        f'y2="{sy(roofs.peak_flops_per_s):.1f}" stroke="#1f5f9f" stroke-width="2">'
        f"<title>memory roof: {_si(roofs.mem_bw_bytes_per_s)}B/s</title></line>"
    )
    parts.append(
        f'<line class="roof-compute" x1="{sx(ridge):.1f}" y1="{sy(roofs.peak_flops_per_s):.1f}" '
        f'x2="{sx(x_high):.1f}" y2="{sy(roofs.peak_flops_per_s):.1f}" stroke="#b45f06" '
        f'stroke-width="2"><title>compute roof (float32): '
        f"{_si(roofs.peak_flops_per_s)}FLOP/s; ridge {ridge:.1f} FLOP/byte</title></line>"
    )
    for index, point in enumerate(points):
        fill = "#6fa8dc" if point.role == "memory" else "#f6b26b"
        x, y = sx(point.x), sy(point.y)
        parts.append(
            f'<circle class="op {point.role}" cx="{x:.1f}" cy="{y:.1f}" r="4.5" fill="{fill}" '
            f'stroke="#333"><title>{escape(point.label)}</title></circle>'
        )
        if index < labelled:
            name = escape(point.label.split(":", 1)[0])
            parts.append(f'<text x="{x + 6:.1f}" y="{y - 5:.1f}" font-size="9">{name}</text>')
    parts.append("</svg>")
    return "".join(parts)


def bars(values: list[Point], x_title: str, plot_id: str, limit: float | None = None) -> str:
    """Horizontal bars, one per point (``x``: its length, ``label``: its name and tooltip);
    ``limit``: a dashed line at that value (the budget)."""
    row, left, width = 18, 230, 420
    height = row * len(values) + 50
    ends = [0.0, *(v.x for v in values), *([limit] if limit is not None else [])]
    low, high = min(ends), max(ends)
    span = high - low or 1.0

    def sx(x: float) -> float:
        return left + (x - low) / span * width

    parts = [
        f'<svg id="{plot_id}" class="plot bars" xmlns="http://www.w3.org/2000/svg" '
        f'width="{left + width + 30}" height="{height}" viewBox="0 0 {left + width + 30} {height}">'
    ]
    for index, value in enumerate(values):
        y = 10 + index * row
        start, end = sorted((sx(0.0), sx(value.x)))
        name = value.label.split(":", 1)[0]
        short = name if len(name) <= 36 else name[:35] + "…"
        parts.append(
            f'<text x="{left - 6}" y="{y + 12}" font-size="10" text-anchor="end">'
            f"{escape(short)}</text>"
            f'<rect class="bar" x="{start:.1f}" y="{y + 2}" width="{max(end - start, 1):.1f}" '
            f'height="{row - 5}" fill="#e06666"><title>{escape(value.label)}</title></rect>'
        )
    bottom = 10 + row * len(values)
    parts.append(f'<line x1="{sx(0.0):.1f}" y1="6" x2="{sx(0.0):.1f}" y2="{bottom}" '
                 'stroke="#333"/>')  # fmt: skip
    if limit is not None:
        parts.append(
            f'<line class="limit" x1="{sx(limit):.1f}" y1="6" x2="{sx(limit):.1f}" '
            f'y2="{bottom}" stroke="#1f5f9f" stroke-dasharray="4 3"><title>budget: '
            f"{limit:g}</title></line>"
        )
    for tick in _ticks(low, high):
        parts.append(f'<text x="{sx(tick):.1f}" y="{bottom + 14}" font-size="10" '
                     f'text-anchor="middle">{tick:g}</text>')  # fmt: skip
    parts.append(f'<text x="{left + width / 2:.0f}" y="{bottom + 32}" font-size="12" '
                 f'text-anchor="middle">{escape(x_title)}</text></svg>')  # fmt: skip
    return "".join(parts)


def _axes() -> list[str]:
    bottom = HEIGHT - MARGIN
    return [
        f'<line x1="{MARGIN}" y1="{bottom}" x2="{WIDTH - MARGIN / 2}" y2="{bottom}" '
        'stroke="#333"/>',
        f'<line x1="{MARGIN}" y1="{bottom}" x2="{MARGIN}" y2="{MARGIN / 2}" stroke="#333"/>',
    ]


def _titles(x_title: str, y_title: str) -> list[str]:
    return [
        f'<text x="{(WIDTH + MARGIN) / 2:.0f}" y="{HEIGHT - 14}" font-size="12" '
        f'text-anchor="middle">{escape(x_title)}</text>',
        f'<text x="14" y="{HEIGHT / 2:.0f}" font-size="12" text-anchor="middle" '
        f'transform="rotate(-90 14 {HEIGHT / 2:.0f})">{escape(y_title)}</text>',
    ]
