"""Names of the Celery queues, tasks and beat entries (Redis holds a queue at
Keys.queue(name), under the pipeline's HEXZ_KEY_PREFIX).

Plain constants, so that the plain modules (the feeder, `hexz status`) can name a queue
without importing the Celery app.
"""

from __future__ import annotations

SELFPLAY_QUEUE = "selfplay"
GPU_QUEUE = "gpu"
# The automatic evaluation and arena matches: their own worker, so that their ticks are
# never stuck behind self-play slices.
EVAL_QUEUE = "eval"

SELFPLAY_TASK = "hexz_tasks.tasks.selfplay"
TRAIN_TASK = "hexz_tasks.tasks.train"
ARENA_TASK = "hexz_tasks.arena_tasks.match"
EVALUATE_TASK = "hexz_tasks.arena_tasks.evaluate"
# Beat entry run by hexz_tasks.celery.Scheduler in the beat process itself, never sent to
# a queue: a feeder queued behind self-play slices would starve the workers it feeds.
FEED_ENTRY = "hexz_tasks.feed_selfplay"
