"""The status page's matplotlib plots: inline SVG, clock-time axes, rating intervals, a
cache per data version, and rendering from the server's many threads."""

from __future__ import annotations

import re
import threading
import xml.etree.ElementTree as ET
from datetime import UTC, datetime

from hexz_tasks.server import plots

NOON = datetime(2024, 6, 1, 12, 0, tzinfo=UTC).timestamp()
SVG = "{http://www.w3.org/2000/svg}"


def texts(svg: str) -> list[str]:
    return [t.strip() for t in re.findall(r"<text[^>]*>([^<]*)</text>", svg) if t.strip()]


def per_minute(start: float, counts: list[int]) -> list[list[float]]:
    return [[start + 60 * i, n] for i, n in enumerate(counts)]


def test_plots_are_inline_svg_elements_labelled_for_the_page() -> None:
    svg = plots.plot("losses", [[1, 3.0, 2.2, 0.8], [2, 2.8, 2.1, 0.7]])
    root = ET.fromstring(svg)
    assert root.tag == f"{SVG}svg"
    assert root.get("class") == "plot" and root.get("data-plot") == "losses"
    assert root.get("aria-label") == "Training loss of each checkpoint (last epoch)"
    assert "<metadata>" not in svg and "<?xml" not in svg
    assert {"total", "policy", "value", "checkpoint", "loss"} <= set(texts(svg))


def test_time_axes_show_clock_time_in_utc() -> None:
    svg = plots.plot("examples_per_minute", per_minute(NOON - 3540, list(range(60))))
    labels = texts(svg)
    clock = [t for t in labels if re.fullmatch(r"\d\d:\d\d", t)]
    assert {"11:15", "11:30", "11:45", "12:00"} <= set(clock), labels
    assert "time (UTC)" in labels and "2024-Jun-01" in labels
    rates = plots.plot("examples_per_hour", [[NOON - 1800, 5000.0], [NOON, 12500.0]])
    assert "12,000" in texts(rates)  # counts with thousands separators
    assert any(re.fullmatch(r"1[12]:\d\d", t) for t in texts(rates)), texts(rates)


def test_ratings_are_drawn_with_their_95_percent_intervals() -> None:
    curve = [[0, 0.0, 0.0, 0.0], [1, 120.0, 40.0, 200.0], [2, 260.0, 170.0, 350.0]]
    mcts = {"player": "mcts", "elo": 150.0, "low": 90.0, "high": 210.0, "games": 40}
    svg = plots.plot("ratings", {"curve": curve, "baselines": [mcts]})
    assert re.search(r'<g id="FillBetweenPolyCollection_\d+"', svg)  # the interval band
    assert re.search(r'<g id="LineCollection_\d+"', svg)  # error bars
    assert "mcts (150)" in texts(svg)
    empty = plots.plot("ratings", {"curve": [], "baselines": []})
    assert "no checkpoint rated yet" in texts(empty) and "FillBetween" not in empty


def test_unchanged_data_is_not_plotted_again() -> None:
    data = per_minute(NOON, [5, 7, 9])
    first = plots.plot("examples_per_minute", data)
    before = plots._render.cache_info()
    assert plots.plot("examples_per_minute", [list(p) for p in data]) is first
    after = plots._render.cache_info()
    assert (after.hits, after.misses) == (before.hits + 1, before.misses)
    changed = plots.plot("examples_per_minute", per_minute(NOON, [5, 7, 10]))
    assert changed != first and plots._render.cache_info().misses == before.misses + 1


def test_rendering_from_many_threads_at_once() -> None:
    results: dict[int, str] = {}
    errors: list[BaseException] = []
    start = threading.Barrier(8)

    def render(i: int) -> None:
        try:
            start.wait(10)
            runs = [[n, 3.0 - n / (10 + i), 2.0, 1.0 - n / (20 + i)] for n in range(1, 6)]
            results[i] = plots.plot("losses", runs)
        except BaseException as e:  # reported below, in the test's thread
            errors.append(e)

    threads = [threading.Thread(target=render, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors
    assert len(set(results.values())) == 8  # eight different data, eight plots
    for svg in results.values():
        assert ET.fromstring(svg).get("data-plot") == "losses"
