"""A Celery worker that stops at one point of the trainer, so a test can SIGKILL it exactly
there: ``python tests/faults.py <point> <flag file> <celery arguments...>``.

Points:
- ``drain``: right after the drain wrote its first chunk file (before the archives and
  before the trim of Redis);
- ``rename``: right before the rename that makes a new checkpoint appear (every file of
  it written and fsynced in its temporary directory).

At the point the pool process writes the flag file (its pid) and sleeps; nothing else of
the worker is changed. Used by tests/test_pipeline.py.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Any


def _stop_here(flag: str) -> None:
    Path(flag).write_text(str(os.getpid()))
    time.sleep(3600)


def _inject(point: str, flag: str) -> None:
    if point == "drain":
        from hexz_tasks.dataset import Dataset

        append = Dataset.append

        def append_then_stop(self: Dataset, *args: Any, **kwargs: Any) -> Any:
            chunk = append(self, *args, **kwargs)
            _stop_here(flag)
            return chunk

        Dataset.append = append_then_stop  # type: ignore[method-assign]
    elif point == "rename":
        from hexz_tasks.training_tick import TrainingHeartbeat

        def stop_before_rename(self: TrainingHeartbeat) -> bool:
            _stop_here(flag)  # ModelRepository.save asks this right before the rename
            return True

        TrainingHeartbeat.owns = stop_before_rename  # type: ignore[method-assign]
    else:
        raise SystemExit(f"unknown point {point!r}: drain or rename")


if __name__ == "__main__":
    point, flag, *celery_args = sys.argv[1:]
    _inject(point, flag)
    from celery.__main__ import main

    sys.argv = ["celery", *celery_args]
    main()
