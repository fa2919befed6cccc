"""Server-side SVG of hex boards (training examples); the plots are plots.py's.

Drawn here in Python so that the pages need no JavaScript. Text is escaped; numbers are
formatted with fixed precision so the output is stable.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from html import escape

import numpy as np

from hexz_tasks.layout import BOARD_SHAPE, COLS, ROWS

# Colours per view: the player to move (channels 0-4) and the opponent (channels 5-9).
MOVER_COLOUR = "#1f77b4"
OTHER_COLOUR = "#d62728"


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
