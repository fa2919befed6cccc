"""Server-side SVG: hex boards of training examples and small line/bar plots.

Everything is drawn here in Python so that the pages need no JavaScript. Text is
escaped; numbers are formatted with fixed precision so the output is stable.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from html import escape

import numpy as np

from hexz_tasks.layout import BOARD_SHAPE, COLS, ROWS

# Colours per view: the player to move (channels 0-4) and the opponent (channels 5-9).
MOVER_COLOUR = "#1f77b4"
OTHER_COLOUR = "#d62728"
SERIES_COLOURS = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b"]


def _valid(r: int, c: int) -> bool:
    return c < COLS - (r % 2)


def _hex_points(cx: float, cy: float, size: float) -> str:
    """Corners of a pointy-top hexagon centred at (cx, cy)."""
    pts = []
    for i in range(6):
        a = math.radians(60 * i - 30)
        pts.append(f"{cx + size * math.cos(a):.1f},{cy + size * math.sin(a):.1f}")
    return " ".join(pts)


@dataclass(frozen=True)
class BoardDrawing:
    """What to draw for one example; arrays are from the view of the player to move."""

    board: np.ndarray  # (11, 11, 10) float32
    move_probs: np.ndarray | None = None  # (2, 11, 10) float32
    move: tuple[int, int, int] | None = None  # (typ, r, c) of the move played


def board_svg(d: BoardDrawing, size: float = 22.0, title: str = "") -> str:
    """One hex board: rocks, grass, flags, pieces and next values per player, move probs.

    Odd rows are shifted right by half a cell, matching the neighbour rule of the spec
    (row r-1 cells c-1+s and c+s touch cell (r, c), s = r % 2).
    """
    b = np.asarray(d.board, dtype=np.float32)
    if b.shape != BOARD_SHAPE:
        raise ValueError(f"board must have shape {BOARD_SHAPE}, got {b.shape}")
    probs = None if d.move_probs is None else np.asarray(d.move_probs, dtype=np.float32)
    w = math.sqrt(3) * size  # hex width
    h = 1.5 * size  # row pitch
    width = w * COLS + w / 2 + 4
    height = h * (ROWS - 1) + 2 * size + 4
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="board" width="{width:.0f}" '
        f'height="{height:.0f}" viewBox="0 0 {width:.1f} {height:.1f}" role="img">'
    ]
    if title:
        out.append(f"<title>{escape(title)}</title>")
    for r in range(ROWS):
        for c in range(COLS):
            if not _valid(r, c):
                continue
            cx = 2 + w / 2 + c * w + (r % 2) * w / 2
            cy = 2 + size + r * h
            out.extend(_cell(b, probs, d.move, r, c, cx, cy, size))
    out.append("</svg>")
    return "".join(out)


def _cell(
    b: np.ndarray,
    probs: np.ndarray | None,
    move: tuple[int, int, int] | None,
    r: int,
    c: int,
    cx: float,
    cy: float,
    size: float,
) -> list[str]:
    flag = (b[0, r, c] > 0, b[5, r, c] > 0)
    value = (int(b[1, r, c]), int(b[6, r, c]))
    grass = int(b[10, r, c])
    blocked_both = b[2, r, c] > 0 and b[7, r, c] > 0
    fill, label, label_colour, kind = "#ffffff", "", "#000", "free"
    if flag[0] or flag[1]:
        colour = MOVER_COLOUR if flag[0] else OTHER_COLOUR
        fill, label, label_colour, kind = _tint(colour), "\u2691", colour, "flag"
    elif value[0] or value[1]:
        colour = MOVER_COLOUR if value[0] else OTHER_COLOUR
        fill, label, label_colour, kind = colour, str(max(value)), "#fff", "piece"
    elif grass:
        fill, label, label_colour, kind = "#9fd89f", str(grass), "#225522", "grass"
    elif blocked_both:
        fill, kind = "#777777", "rock"
    played = move is not None and move[1] == r and move[2] == c
    stroke = 'stroke="#ff9900" stroke-width="3"' if played else 'stroke="#999" stroke-width="1"'
    parts = [
        f'<g class="cell {kind}" data-r="{r}" data-c="{c}">',
        f'<polygon points="{_hex_points(cx, cy, size - 1)}" fill="{fill}" {stroke}/>',
    ]
    if probs is not None:
        p = float(probs[0, r, c] + probs[1, r, c])
        if p > 0:
            # Area proportional to the probability mass on this cell (flag + normal).
            rad = (size - 3) * math.sqrt(min(p, 1.0))
            parts.append(
                f'<circle class="prob" cx="{cx:.1f}" cy="{cy:.1f}" r="{rad:.1f}" '
                f'fill="#ffcc00" fill-opacity="0.55"/>'
            )
    if label:
        parts.append(
            f'<text x="{cx:.1f}" y="{cy + 4:.1f}" text-anchor="middle" '
            f'font-size="{size * 0.6:.0f}" fill="{label_colour}" font-weight="bold">'
            f"{escape(label)}</text>"
        )
    nxt = (int(b[3, r, c]), int(b[8, r, c]))
    fs = size * 0.38
    if nxt[0]:
        parts.append(
            f'<text class="next" x="{cx - size * 0.45:.1f}" y="{cy - size * 0.25:.1f}" '
            f'font-size="{fs:.0f}" fill="{MOVER_COLOUR}">{nxt[0]}</text>'
        )
    if nxt[1]:
        parts.append(
            f'<text class="next" x="{cx + size * 0.2:.1f}" y="{cy - size * 0.25:.1f}" '
            f'font-size="{fs:.0f}" fill="{OTHER_COLOUR}">{nxt[1]}</text>'
        )
    if probs is not None:
        pf, pn = float(probs[0, r, c]), float(probs[1, r, c])
        if pf >= 0.01 or pn >= 0.01:
            text = " ".join(
                t
                for t in (f"f{pf:.0%}" if pf >= 0.01 else "", f"{pn:.0%}" if pn >= 0.01 else "")
                if t
            )
            parts.append(
                f'<text class="p" x="{cx:.1f}" y="{cy + size * 0.7:.1f}" text-anchor="middle" '
                f'font-size="{fs:.0f}" fill="#333">{escape(text)}</text>'
            )
    if played:
        kind_text = "flag" if move is not None and move[0] == 0 else "piece"
        parts.append(f"<title>move played: {kind_text} at ({r}, {c})</title>")
    parts.append("</g>")
    return parts


def _tint(colour: str) -> str:
    """A light version of a #rrggbb colour, for flag cells."""
    rgb = [int(colour[i : i + 2], 16) for i in (1, 3, 5)]
    return "#" + "".join(f"{int(v + (255 - v) * 0.75):02x}" for v in rgb)


@dataclass(frozen=True)
class Series:
    name: str
    points: Sequence[tuple[float, float]]


def line_plot(
    series: Sequence[Series],
    *,
    title: str,
    x_label: str,
    y_label: str,
    bars: bool = False,
    width: int = 520,
    height: int = 240,
) -> str:
    """A small plot with axes, ticks and a legend. `bars` draws the first series as bars."""
    pts = [p for s in series for p in s.points if math.isfinite(p[0]) and math.isfinite(p[1])]
    left, right, top, bottom = 56, 12, 28, 40
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="plot" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" role="img">',
        f"<title>{escape(title)}</title>",
        f'<text x="{width / 2:.0f}" y="16" text-anchor="middle" font-size="13" '
        f'font-weight="bold">{escape(title)}</text>',
    ]
    if not pts:
        out.append(
            f'<text x="{width / 2:.0f}" y="{height / 2:.0f}" text-anchor="middle" '
            f'font-size="12" fill="#777">no data yet</text></svg>'
        )
        return "".join(out)
    xs = [p[0] for p in pts]
    ys = [p[1] for p in pts]
    x0, x1 = min(xs), max(xs)
    y0, y1 = min(ys), max(ys)
    if bars:
        y0 = min(0.0, y0)
        x0, x1 = x0 - 0.5, x1 + 0.5
    x0, x1 = _widen(x0, x1)
    y0, y1 = _widen(y0, y1)
    pw, ph = width - left - right, height - top - bottom

    def sx(x: float) -> float:
        return left + (x - x0) / (x1 - x0) * pw

    def sy(y: float) -> float:
        return top + ph - (y - y0) / (y1 - y0) * ph

    out.append(f'<rect x="{left}" y="{top}" width="{pw}" height="{ph}" fill="none" stroke="#444"/>')
    for i in range(5):
        yv = y0 + (y1 - y0) * i / 4
        out.append(
            f'<line x1="{left - 4}" y1="{sy(yv):.1f}" x2="{left + pw}" y2="{sy(yv):.1f}" '
            f'stroke="#ddd"/><text x="{left - 6}" y="{sy(yv) + 4:.1f}" text-anchor="end" '
            f'font-size="10">{_fmt(yv, y1 - y0)}</text>'
        )
        xv = x0 + (x1 - x0) * i / 4
        out.append(
            f'<text x="{sx(xv):.1f}" y="{top + ph + 14}" text-anchor="middle" '
            f'font-size="10">{_fmt(xv, x1 - x0)}</text>'
        )
    out.append(
        f'<text x="{left + pw / 2:.0f}" y="{height - 6}" text-anchor="middle" '
        f'font-size="11">{escape(x_label)}</text>'
        f'<text x="12" y="{top + ph / 2:.0f}" text-anchor="middle" font-size="11" '
        f'transform="rotate(-90 12 {top + ph / 2:.0f})">{escape(y_label)}</text>'
    )
    for i, s in enumerate(series):
        colour = SERIES_COLOURS[i % len(SERIES_COLOURS)]
        good = [p for p in s.points if math.isfinite(p[0]) and math.isfinite(p[1])]
        if bars and i == 0:
            bw = max(1.0, pw / max(1.0, x1 - x0) * 0.8)
            for x, y in good:
                out.append(
                    f'<rect class="bar" x="{sx(x) - bw / 2:.1f}" y="{min(sy(y), sy(0)):.1f}" '
                    f'width="{bw:.1f}" height="{abs(sy(0) - sy(y)):.1f}" fill="{colour}"/>'
                )
        else:
            path = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in good)
            out.append(
                f'<polyline class="line" points="{path}" fill="none" stroke="{colour}" '
                f'stroke-width="2"/>'
            )
            out.extend(
                f'<circle cx="{sx(x):.1f}" cy="{sy(y):.1f}" r="2.5" fill="{colour}"/>'
                for x, y in good
            )
        out.append(
            f'<text x="{left + 8}" y="{top + 14 + 13 * i}" font-size="11" '
            f'fill="{colour}">{escape(s.name)}</text>'
        )
    out.append("</svg>")
    return "".join(out)


def _widen(lo: float, hi: float) -> tuple[float, float]:
    """An axis range that is never empty: a single value gets 10% (or 1) either side."""
    if hi > lo:
        return lo, hi
    pad = abs(lo) * 0.1 or 1.0
    return lo - pad, hi + pad


def _fmt(v: float, span: float) -> str:
    """A tick label with enough digits that ticks `span / 4` apart read differently."""
    step = span / 4
    if abs(v) < step * 1e-6:
        return "0"
    e_step = math.floor(math.log10(step))
    if 1e-3 <= abs(v) < 1e6:
        return f"{v:.{max(0, 1 - e_step)}f}"
    return f"{v:.{max(1, math.floor(math.log10(abs(v))) - e_step + 2)}g}"
