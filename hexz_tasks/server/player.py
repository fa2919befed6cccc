"""The CPU player behind POST /hexz/cpu/suggest and CPUPlayerService.SuggestMove.

Checks what the server can check cheaply (body, game type, think time), caps the think
time and iterations at the server's limits, and runs the search on a bounded number of
requests at once. Board contents and legality are checked by selfplay.suggest_move.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

from google.protobuf.message import DecodeError

from hexz_tasks import hexz_pb2
from hexz_tasks.settings import Settings

# Requests beyond these are a client's bug, not something to cap silently: an hour of
# thinking, or more iterations than an int32 holds.
ABSURD_THINK_TIME_MS = 3_600_000
ABSURD_ITERATIONS = 2**31 - 1
# A SuggestMoveRequest is a few kB; anything this big is not one (HTTP and gRPC).
MAX_REQUEST_BYTES = 1 << 20
# How long a request waits for a free search slot before it is told to come back:
# waiting longer would hold an HTTP or gRPC thread for a search that has not started.
SLOT_WAIT_S = 0.25


class ClientError(ValueError):
    """The request is wrong; the message says what (HTTP 400 / INVALID_ARGUMENT)."""


class Busy(RuntimeError):
    """No search slot became free in time (HTTP 503 / RESOURCE_EXHAUSTED)."""


class Unavailable(RuntimeError):
    """The server cannot answer right now, e.g. no model yet (HTTP 503 / UNAVAILABLE)."""


def parse_request(body: bytes) -> hexz_pb2.SuggestMoveRequest:
    """Parses and checks a SuggestMoveRequest; raises ClientError saying what is wrong."""
    if len(body) > MAX_REQUEST_BYTES:
        raise ClientError(f"request is {len(body)} bytes, at most {MAX_REQUEST_BYTES} accepted")
    req = hexz_pb2.SuggestMoveRequest()
    try:
        req.ParseFromString(body)
    except DecodeError as e:
        raise ClientError(f"body is not a serialized SuggestMoveRequest: {e}") from None
    kind = req.game_engine_state.WhichOneof("state")
    if kind is None:
        raise ClientError("SuggestMoveRequest has no game_engine_state (expected a flagz game)")
    if kind != "flagz":
        raise ClientError(f"unknown game type {kind!r}: only flagz is supported")
    if not req.game_engine_state.flagz.HasField("board"):
        raise ClientError("game_engine_state.flagz has no board")
    if req.max_think_time_ms < 0:
        raise ClientError(f"max_think_time_ms must be >= 0, got {req.max_think_time_ms}")
    if req.max_iterations < 0:
        raise ClientError(f"max_iterations must be >= 0, got {req.max_iterations}")
    if req.max_think_time_ms > ABSURD_THINK_TIME_MS:
        raise ClientError(
            f"max_think_time_ms={req.max_think_time_ms} is absurd (more than an hour); "
            f"this server thinks at most {ABSURD_THINK_TIME_MS} ms"
        )
    if req.max_iterations > ABSURD_ITERATIONS:
        raise ClientError(f"max_iterations={req.max_iterations} is out of range")
    if req.max_think_time_ms == 0 and req.max_iterations == 0:
        raise ClientError("set max_think_time_ms or max_iterations (both are 0)")
    return req


def cap_request(
    req: hexz_pb2.SuggestMoveRequest, settings: Settings, waited_ms: int = 0
) -> hexz_pb2.SuggestMoveRequest:
    """A copy with think time/iterations capped at the server's limits.

    Time already spent waiting for a search slot is taken off the think time so the
    answer still arrives within what the client asked for (at least 1 ms remains).
    """
    capped = hexz_pb2.SuggestMoveRequest()
    capped.CopyFrom(req)
    if req.max_think_time_ms > 0:
        think = min(req.max_think_time_ms, settings.max_think_time_ms)
        capped.max_think_time_ms = max(1, think - waited_ms)
    if req.max_iterations > 0:
        capped.max_iterations = min(req.max_iterations, settings.max_suggest_iterations)
    return capped


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
            from hexz_tasks.selfplay import suggest_move

            model = self._model()
            try:
                out = suggest_move(model, capped.SerializeToString(), self.settings)
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
