"""Inline SVG bar charts for the HTML reports: no script, no external asset, fixed number format.

Every chart is a `<svg role="img">` with a `<title>`, its bars and their values written out as
text, so it reads without colour and prints as it shows.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from html import escape

from markupsafe import Markup

ROW = 26  # px per bar row
LABEL = 230  # px for the labels on the left
BAR = 300  # px for the longest bar
COLOURS = ("#1f5fa8", "#d07b12")


@dataclass(frozen=True)
class Bar:
    """One bar: its label, its value (the bar's length) and the text shown beside it."""

    label: str
    value: float
    text: str


def _n(x: float) -> str:
    """Coordinates with at most one decimal, the same on every machine."""
    return f"{x:.1f}".rstrip("0").rstrip(".")


def _open(title: str, width: float, height: float) -> list[str]:
    return [
        f'<svg xmlns="http://www.w3.org/2000/svg" role="img" width="{_n(width)}" height="{_n(height)}" '
        f'viewBox="0 0 {_n(width)} {_n(height)}" class="chart">',
        f"<title>{escape(title)}</title>",
    ]


def bars(title: str, rows: Sequence[Bar], scale: float | None = None) -> Markup:
    """Horizontal bars, one per row, scaled to the largest value (or `scale`)."""
    top = scale or max([r.value for r in rows] + [0]) or 1
    height = ROW * len(rows) + 8
    out = _open(title, LABEL + BAR + 110, height)
    for i, r in enumerate(rows):
        y = 4 + i * ROW
        length = BAR * r.value / top if r.value > 0 else 0
        out.append(f'<text x="{LABEL - 8}" y="{_n(y + 16)}" text-anchor="end">{escape(r.label)}</text>')
        out.append(f'<rect x="{LABEL}" y="{_n(y + 3)}" width="{_n(length)}" height="{ROW - 8}" '
                   f'fill="{COLOURS[0]}"/>')
        out.append(f'<text x="{_n(LABEL + length + 6)}" y="{_n(y + 16)}">{escape(r.text)}</text>')
    out.append("</svg>")
    return Markup("".join(out))


def columns(title: str, rows: Sequence[Bar], height: float = 160) -> Markup:
    """Vertical columns, one per row (months, periods), labels below."""
    top = max([r.value for r in rows] + [0]) or 1
    width = 70 * len(rows) + 20
    out = _open(title, width, height + 44)
    for i, r in enumerate(rows):
        x = 10 + i * 70
        length = (height - 20) * r.value / top if r.value > 0 else 0
        base = height
        out.append(f'<rect x="{x + 12}" y="{_n(base - length)}" width="46" height="{_n(length)}" '
                   f'fill="{COLOURS[0]}"/>')
        out.append(f'<text x="{x + 35}" y="{_n(base - length - 5)}" text-anchor="middle">'
                   f"{escape(r.text)}</text>")
        out.append(f'<text x="{x + 35}" y="{_n(base + 18)}" text-anchor="middle">{escape(r.label)}</text>')
    out.append(f'<line x1="10" y1="{_n(height)}" x2="{width - 10}" y2="{_n(height)}" stroke="#555"/>')
    out.append("</svg>")
    return Markup("".join(out))


def pairs(title: str, rows: Sequence[tuple[str, Bar, Bar]], legend: tuple[str, str]) -> Markup:
    """Two bars per row (e.g. the institution against its sector's median), with a legend."""
    top = max([b.value for _l, a, b2 in rows for b in (a, b2)] + [0]) or 1
    height = 2 * ROW * len(rows) + 34
    out = _open(title, LABEL + BAR + 110, height)
    for i, (label, first, second) in enumerate(rows):
        y = 4 + i * 2 * ROW
        out.append(f'<text x="{LABEL - 8}" y="{_n(y + 22)}" text-anchor="end">{escape(label)}</text>')
        for j, bar in enumerate((first, second)):
            yy = y + j * (ROW - 4)
            length = BAR * bar.value / top if bar.value > 0 else 0
            out.append(f'<rect x="{LABEL}" y="{_n(yy + 3)}" width="{_n(length)}" height="{ROW - 10}" '
                       f'fill="{COLOURS[j]}"/>')
            out.append(f'<text x="{_n(LABEL + length + 6)}" y="{_n(yy + 15)}">{escape(bar.text)}</text>')
    y = height - 14
    for j, name in enumerate(legend):
        x = LABEL + j * 160
        out.append(f'<rect x="{x}" y="{y - 10}" width="12" height="12" fill="{COLOURS[j]}"/>')
        out.append(f'<text x="{x + 18}" y="{y}">{escape(name)}</text>')
    out.append("</svg>")
    return Markup("".join(out))
