"""Progress bars for long commands (tqdm), on stderr and only while it is a terminal.

Piped into a log, a bar would be one line redrawn with carriage returns hundreds of times;
there the bars stay silent (tqdm's ``disable=None``) and the commands print their result
lines only.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from tqdm import tqdm

# Redraws at most this often: a bar costs nothing next to the work it tracks.
MIN_INTERVAL_S = 0.5
TIMED_FORMAT = "{desc}: {percentage:3.0f}%|{bar}| {n:.0f}/{total:.0f} s [{remaining} left]"


def bar(total: float | None, desc: str, unit: str = "it", **kwargs: Any) -> tqdm:
    """A bar of `total` `unit`s (None: a counter with a rate, no time left)."""
    return tqdm(
        total=total,
        desc=desc,
        unit=unit,
        disable=None,
        dynamic_ncols=True,
        mininterval=MIN_INTERVAL_S,
        **kwargs,
    )


@contextmanager
def timed(desc: str, seconds: float) -> Iterator[tqdm]:
    """A bar for work that runs a fixed time (a benchmark phase): seconds done and left,
    advanced from a thread so the timed loop itself is untouched. Lines printed meanwhile
    go through the bar's ``write`` so they do not tear it."""
    with bar(seconds, desc, unit="s", bar_format=TIMED_FORMAT) as b:
        if b.disable:
            yield b
            return
        done = threading.Event()
        start = time.monotonic()

        def tick() -> None:
            while not done.wait(MIN_INTERVAL_S):
                b.n = min(seconds, time.monotonic() - start)
                b.refresh()

        thread = threading.Thread(target=tick, name="hexz-progress", daemon=True)
        thread.start()
        try:
            yield b
        finally:
            done.set()
            thread.join()
            b.n = min(seconds, time.monotonic() - start)
