"""A stacked bar chart as inline SVG, drawn on the server: no script, no font or
stylesheet from anywhere (the text uses the browser's own sans-serif). Pure: values
in, markup out; every text in it is escaped."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from html import escape

WIDTH, HEIGHT = 720, 220
LEFT, RIGHT, TOP, BOTTOM = 48, 8, 12, 40  # margins: the axis labels and the legend live there


@dataclass(frozen=True)
class Series:
    name: str
    color: str  # a CSS colour, from this module's callers only


def nice_ceiling(value: int) -> int:
    """The top of the axis: 1, 2 or 5 times a power of ten, at least ``value``."""
    step = 1
    while True:
        for factor in (1, 2, 5):
            if factor * step >= value:
                return factor * step
        step *= 10


def stacked_bars(title: str, labels: Sequence[str], series: Sequence[Series], values: Sequence[Sequence[int]]) -> str:
    """``values[i][j]``: bar ``i`` (labelled ``labels[i]``), series ``j``, stacked
    bottom-up in the order of ``series``."""
    top = nice_ceiling(max((sum(bar) for bar in values), default=0) or 1)
    plot_width, plot_height = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
    slot = plot_width / max(len(labels), 1)
    bar_width = max(slot * 0.75, 1.0)
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {WIDTH} {HEIGHT}" width="100%" '
        f'role="img" aria-label="{escape(title)}" font-family="sans-serif" font-size="11">',
        f"<title>{escape(title)}</title>",
    ]
    # Gridlines at whole values, each where its value is (a middle line at 2 of
    # 5 sits at 2, not halfway).
    for value in sorted({0, top // 2, top}):
        y = TOP + plot_height * (1 - value / top)
        parts.append(f'<line x1="{LEFT}" y1="{y:.1f}" x2="{WIDTH - RIGHT}" y2="{y:.1f}" stroke="#ddd"/>')
        parts.append(f'<text x="{LEFT - 6}" y="{y + 4:.1f}" text-anchor="end" fill="#666">{value}</text>')
    for index, (label, bar) in enumerate(zip(labels, values, strict=True)):
        x = LEFT + slot * index + (slot - bar_width) / 2
        base: float = TOP + plot_height
        tooltip = escape(
            f"{label}: " + ", ".join(f"{count} {kind.name}" for kind, count in zip(series, bar, strict=True))
        )
        parts.append(f"<g><title>{tooltip}</title>")
        for kind, count in zip(series, bar, strict=True):
            if not count:
                continue
            height = plot_height * count / top
            base -= height
            parts.append(
                f'<rect x="{x:.1f}" y="{base:.1f}" width="{bar_width:.1f}" height="{height:.1f}" fill="{kind.color}"/>'
            )
        parts.append("</g>")
        if index % 3 == 0 or index == len(labels) - 1:
            parts.append(
                f'<text x="{x + bar_width / 2:.1f}" y="{HEIGHT - BOTTOM + 14}" text-anchor="middle" '
                f'fill="#666">{escape(label)}</text>'
            )
    legend_x = LEFT
    for kind in series:
        parts.append(f'<rect x="{legend_x}" y="{HEIGHT - 10}" width="10" height="10" fill="{kind.color}"/>')
        parts.append(f'<text x="{legend_x + 14}" y="{HEIGHT - 1}" fill="#333">{escape(kind.name)}</text>')
        legend_x += 24 + 7 * len(kind.name)
    parts.append("</svg>")
    return "".join(parts)
