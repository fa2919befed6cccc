"""Hexz: AlphaZero-style self-play training for Flagz on Celery workers.

The Celery app lives in :mod:`hexz_tasks.celery` (``celery -A hexz_tasks`` finds it);
importing this package stays light so that engine users do not pull in Celery.
"""

__version__ = "0.1.0"
