"""The status page's plots: matplotlib figures rendered to inline SVG on the server.

matplotlib runs headless (Agg) through ``Figure`` objects, never pyplot's global state,
and one lock serialises rendering, which shares font and style state between threads.
Each plot is cached by its data: a page load whose numbers did not change re-plots
nothing. Times are clock times in UTC (the page's other times are too); ratings are
drawn with their 95 % intervals.
"""

from __future__ import annotations

import functools
import io
import json
import re
import threading
from collections.abc import Callable
from datetime import UTC, datetime
from html import escape
from typing import Any

import matplotlib
import matplotlib.dates as mdates
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator, StrMethodFormatter

matplotlib.use("Agg")

STYLE = {
    "font.size": 9,
    "axes.titlesize": 10,
    "axes.titleweight": "bold",
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "grid.color": "#e4e4e4",
    "legend.fontsize": 8,
    "legend.frameon": False,
    "svg.fonttype": "none",  # text stays text: smaller, selectable, the page's font
    "svg.hashsalt": "hexz",  # the same SVG for the same data
}
FIGSIZE = (6.0, 3.1)
CACHED_PLOTS = 64
_LOCK = threading.Lock()

Data = Any  # plain JSON values: what a plot is cached by


def _clock(ax: Axes) -> None:
    """A time axis in UTC clock time (concise labels: 14:05, and the date once)."""
    locator = mdates.AutoDateLocator(tz=UTC, minticks=3, maxticks=7)
    ax.xaxis.set_major_locator(locator)
    ax.xaxis.set_major_formatter(mdates.ConciseDateFormatter(locator, tz=UTC))
    ax.set_xlabel("time (UTC)")


def _times(ts: list[float]) -> list[datetime]:
    return [datetime.fromtimestamp(t, UTC) for t in ts]


def _no_data(ax: Axes, text: str) -> None:
    ax.set_axis_off()
    ax.text(0.5, 0.5, text, ha="center", va="center", color="#777", transform=ax.transAxes)


def _counts(ax: Axes) -> None:
    """A y axis of whole counts from 0, with thousands separators."""
    ax.set_ylim(bottom=0)
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.yaxis.set_major_formatter(StrMethodFormatter("{x:,.0f}"))


def _draw_losses(ax: Axes, runs: Data) -> None:
    ax.set_title("Training loss of each checkpoint (last epoch)")
    if not runs:
        return _no_data(ax, "no training run yet")
    x = [r[0] for r in runs]
    for i, name in enumerate(("total", "policy", "value")):
        ax.plot(x, [r[i + 1] for r in runs], marker="o", markersize=3, label=name)
    ax.set_xlabel("checkpoint")
    ax.set_ylabel("loss")
    ax.legend(loc="upper right")


def _draw_examples_per_hour(ax: Axes, points: Data) -> None:
    ax.set_title("Examples stored per hour, between trainings")
    if not points:
        return _no_data(ax, "needs two training runs")
    ax.plot(
        _times([p[0] for p in points]),
        [p[1] for p in points],
        drawstyle="steps-pre",
        marker="o",
        markersize=3,
    )
    _clock(ax)
    ax.set_ylabel("examples / hour")
    _counts(ax)


def _draw_examples_per_minute(ax: Axes, minutes: Data) -> None:
    ax.set_title("Examples stored per minute, last hour")
    if not any(m[1] for m in minutes):
        return _no_data(ax, "no examples stored in the last hour")
    colours = ["#4c78a8"] * (len(minutes) - 1) + ["#a9c1dd"]  # the minute still running
    starts = _times([m[0] for m in minutes])
    ax.bar(starts, [m[1] for m in minutes], width=1 / 1440, align="edge", color=colours)
    _clock(ax)
    ax.set_ylabel("examples / minute")
    _counts(ax)


def _draw_ratings(ax: Axes, data: Data) -> None:
    ax.set_title("Elo of each checkpoint (checkpoint 0 = 0), 95% intervals")
    curve, others = data["curve"], data["baselines"]
    if not curve:
        return _no_data(ax, "no checkpoint rated yet")
    x = [e[0] for e in curve]
    elo = [e[1] for e in curve]
    low = [e[1] - e[2] for e in curve]
    high = [e[3] - e[1] for e in curve]
    ax.fill_between(x, [e[2] for e in curve], [e[3] for e in curve], alpha=0.18, linewidth=0)
    ax.errorbar(x, elo, yerr=[low, high], marker="o", markersize=3, capsize=2, label="checkpoint")
    for i, b in enumerate(others):
        colour = f"C{i + 1}"
        ax.axhspan(b["low"], b["high"], color=colour, alpha=0.1, linewidth=0)
        ax.axhline(b["elo"], color=colour, linestyle="--", label=f"{b['player']} ({b['elo']:.0f})")
    ax.set_xlabel("checkpoint")
    ax.set_ylabel("Elo")
    ax.legend(loc="upper left")


def _draw_heldout(ax: Axes, curve: Data) -> None:
    ax.set_title("Held-out positions (pure-MCTS games)")
    if not curve:
        return _no_data(ax, "no checkpoint measured yet")
    x = [e[0] for e in curve]
    ax.plot(x, [e[1] for e in curve], marker="o", markersize=3, label="policy cross-entropy")
    ax.plot(x, [e[2] for e in curve], marker="o", markersize=3, label="value MSE")
    ax.set_xlabel("checkpoint")
    ax.set_ylabel("loss")
    acc = ax.twinx()
    acc.plot(x, [e[3] for e in curve], color="C2", marker="s", markersize=3, label="sign accuracy")
    acc.set_ylim(0, 1)
    acc.set_ylabel("value sign accuracy")
    acc.grid(False)
    acc.spines["right"].set_visible(True)
    lines = ax.get_lines() + acc.get_lines()
    labels = [line.get_label() for line in lines]
    ax.figure.legend(lines, labels, loc="outside lower center", ncols=len(lines))


DRAW: dict[str, Callable[[Axes, Data], None]] = {
    "losses": _draw_losses,
    "examples_per_hour": _draw_examples_per_hour,
    "examples_per_minute": _draw_examples_per_minute,
    "ratings": _draw_ratings,
    "heldout": _draw_heldout,
}


def plot(kind: str, data: Data) -> str:
    """The SVG of plot `kind` (a key of DRAW) for `data`, from the cache if drawn before."""
    return _render(kind, json.dumps(data, sort_keys=True))


@functools.lru_cache(maxsize=CACHED_PLOTS)
def _render(kind: str, data: str) -> str:
    with _LOCK, matplotlib.rc_context(STYLE):
        fig = Figure(figsize=FIGSIZE, layout="constrained")
        ax = fig.add_subplot()
        DRAW[kind](ax, json.loads(data))
        out = io.StringIO()
        fig.savefig(out, format="svg", metadata={"Date": None})
    return _inline(out.getvalue(), ax.get_title(), kind)


def _inline(svg: str, title: str, kind: str) -> str:
    """The bare <svg> element for an HTML page, labelled for screen readers and tests."""
    svg = svg[svg.index("<svg") :]
    svg = re.sub(r"\s*<metadata>.*?</metadata>", "", svg, count=1, flags=re.S)
    head = f'<svg class="plot" data-plot="{kind}" role="img" aria-label="{escape(title)}" '
    return svg.replace("<svg ", head, 1)
