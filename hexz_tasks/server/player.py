"""The CPU player behind POST /hexz/cpu/suggest and CPUPlayerService.SuggestMove.

Checks what the server can check cheaply (body, game type, think time), caps the think
time and iterations at the server's limits, and runs the search on a bounded number of
requests at once. The request is checked and searched by hexz_tasks.suggest.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

from hexz_tasks.settings import Settings
from hexz_tasks.suggest import ClientError, answer, cap_request, parse_request

# How long a request waits for a free search slot before it is told to come back:
# waiting longer would hold an HTTP or gRPC thread for a search that has not started.
SLOT_WAIT_S = 0.25


class Busy(RuntimeError):
    """No search slot became free in time (HTTP 503 / RESOURCE_EXHAUSTED)."""


class Unavailable(RuntimeError):
    """The server cannot answer right now, e.g. no model yet (HTTP 503 / UNAVAILABLE)."""


class CpuPlayer:
    """Answers SuggestMoveRequests with at most `settings.max_concurrent_suggestions` searches.

    `model` returns the model to search with (loaded once, swapped when a newer
    checkpoint is published).
    """

    def __init__(self, settings: Settings, model: Callable[[], Any]) -> None:
        self.settings = settings
        self._model = model
        self._slots = threading.BoundedSemaphore(settings.max_concurrent_suggestions)
        self._lock = threading.Lock()
        self.active = 0
        self.served = 0
        self.rejected = 0
        self.busy = 0

    def suggest(self, body: bytes) -> bytes:
        """Serialized SuggestMoveResponse for a serialized request.

        Raises ClientError for bad requests, Busy when no slot frees up within
        SLOT_WAIT_S, Unavailable when there is no model.
        """
        start = time.monotonic()
        try:
            req = parse_request(body)
        except ClientError:
            self._count("rejected")
            raise
        if not self._slots.acquire(timeout=SLOT_WAIT_S):
            self._count("busy")
            raise Busy(
                f"all {self.settings.max_concurrent_suggestions} search slots are busy; "
                "try again in a moment"
            )
        try:
            with self._lock:
                self.active += 1
            waited_ms = int((time.monotonic() - start) * 1000)
            capped = cap_request(req, self.settings, waited_ms)
            model = self._model()
            try:
                out = answer(model, capped, self.settings)
            except ValueError as e:
                self._count("rejected")
                raise ClientError(str(e)) from None
            self._count("served")
            return out
        finally:
            with self._lock:
                self.active -= 1
            self._slots.release()

    def _count(self, what: str) -> None:
        with self._lock:
            setattr(self, what, getattr(self, what) + 1)

    def stats(self) -> dict[str, int]:
        with self._lock:
            return {
                "active": self.active,
                "served": self.served,
                "rejected": self.rejected,
                "busy": self.busy,
                "limit": self.settings.max_concurrent_suggestions,
            }
