"""The HTTP server: the CPU player for the game server, status pages and JSON.

A Flask app (:func:`create_app`) served by waitress with a bounded thread pool
(:func:`make_http_server`). Client mistakes are answered with 4xx and a message that
says what is wrong; only the server's own bugs become a 500.
"""

from __future__ import annotations

import logging
import math
from datetime import UTC, datetime
from typing import Any

import numpy as np
import redis
from flask import Flask, Response, jsonify, render_template, request
from flask.json.provider import DefaultJSONProvider
from markupsafe import Markup
from werkzeug.exceptions import HTTPException

from hexz_tasks import hexz_pb2
from hexz_tasks.examples import decode_array
from hexz_tasks.layout import CELLS, COLS
from hexz_tasks.server import overview as ov
from hexz_tasks.server import plots, svg
from hexz_tasks.server.player import Busy, Unavailable
from hexz_tasks.server.state import ServerState
from hexz_tasks.suggest import MAX_REQUEST_BYTES, ClientError

log = logging.getLogger(__name__)

PROTOBUF_TYPES = ("application/x-protobuf", "application/protobuf", "application/octet-stream")
MAX_BODY_BYTES = MAX_REQUEST_BYTES
MAX_EXAMPLES_SHOWN = 50
# Rows of each status page table (newest first); the JSON endpoints have them all.
ROWS_SHOWN = 20
# waitress: a connection silent this long is closed (checked every CLEANUP_INTERVAL_S),
# so half-sent requests cannot hold connections for minutes.
CHANNEL_TIMEOUT_S = 10
CLEANUP_INTERVAL_S = 2
CONNECTION_LIMIT = 256


def finite(obj: Any) -> Any:
    """`obj` with NaN and infinities replaced by None, in nested dicts, lists and tuples:
    JSON has no NaN, and a browser's JSON.parse refuses it."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: finite(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [finite(v) for v in obj]
    return obj


class FiniteJSONProvider(DefaultJSONProvider):
    def dumps(self, obj: Any, **kwargs: Any) -> str:
        return super().dumps(finite(obj), **kwargs)


def create_app(state: ServerState) -> Flask:
    app = Flask(__name__)
    app.json = FiniteJSONProvider(app)
    app.config["MAX_CONTENT_LENGTH"] = MAX_BODY_BYTES

    @app.errorhandler(HTTPException)
    def http_error(e: HTTPException) -> tuple[Response, int]:
        return _error(e.code or 500, e.description or e.name)

    @app.post("/hexz/cpu/suggest")
    def suggest() -> Response | tuple[Response, int]:
        ctype = (request.mimetype or "").lower()
        if ctype not in PROTOBUF_TYPES:
            return _error(
                400,
                f"Content-Type must be application/x-protobuf (a serialized "
                f"SuggestMoveRequest), got {request.content_type or 'none'!r}",
            )
        try:
            out = state.player.suggest(request.get_data(cache=False))
        except ClientError as e:
            return _error(400, str(e))
        except (Busy, Unavailable) as e:
            return _error(503, str(e))
        return Response(out, mimetype="application/x-protobuf")

    @app.get("/healthz")
    def healthz() -> tuple[Response, int]:
        ok = ov.redis_ok(state.health_redis)
        body = {"ok": ok, "redis": ok, "cpu_player_model": state.models.describe()}
        return jsonify(body), (200 if ok else 503)

    @app.get("/status.json")
    def status_json() -> Response:
        return jsonify(ov.overview(state))

    @app.get("/training_runs.json")
    def runs_json() -> Response:
        """The runs as the trainer recorded them (all epochs' losses and timings)."""
        return jsonify(ov.training_runs(state))

    @app.get("/checkpoints.json")
    def checkpoints_json() -> Response:
        return jsonify(ov.checkpoints(state))

    @app.get("/")
    def status_page() -> str:
        data = ov.overview(state)
        return render_template(
            "status.html",
            s=data,
            plots=_plots(data),
            shown=ROWS_SHOWN,
            fmt_time=_fmt_time,
            fmt_duration=_fmt_duration,
        )

    @app.get("/examples/latest")
    def latest_examples() -> str:
        n = _count_arg()
        newest_first = reversed(ov.latest_examples(state, n))
        shown = [_example_view(i, ex) for i, ex in enumerate(newest_first)]
        return render_template("examples.html", examples=shown, n=n, fmt_time=_fmt_time)

    @app.get("/examples/latest.json")
    def latest_examples_json() -> Response:
        n = _count_arg()
        out = []
        for ex in reversed(ov.latest_examples(state, n)):
            out.append(
                {
                    "unix_micros": ex.unix_micros,
                    "turn": ex.turn,
                    "result": ex.result,
                    "move": _move_dict(ex),
                    "value": ex.model_predictions.value
                    if ex.HasField("model_predictions")
                    else None,
                    "model_key": {"name": ex.model_key.name, "checkpoint": ex.model_key.checkpoint}
                    if ex.HasField("model_key")
                    else None,
                }
            )
        return jsonify(out)  # FiniteJSONProvider: a stored NaN becomes null

    @app.get("/favicon.ico")
    def favicon() -> Response:
        return Response(status=204)

    @app.errorhandler(redis.RedisError)
    def redis_down(e: redis.RedisError) -> tuple[Response, int]:
        return _error(503, f"Redis is unavailable: {e}")

    return app


def _count_arg() -> int:
    raw = request.args.get("n", "8")
    try:
        n = int(raw)
    except ValueError:
        raise ClientArgError(f"n must be an integer, got {raw!r}") from None
    if not 1 <= n <= MAX_EXAMPLES_SHOWN:
        raise ClientArgError(f"n must be between 1 and {MAX_EXAMPLES_SHOWN}, got {n}")
    return n


class ClientArgError(HTTPException):
    code = 400


def _error(code: int, message: str) -> tuple[Response, int]:
    """Plain text for browsers and scripts alike; the message says what is wrong."""
    return Response(message + "\n", status=code, mimetype="text/plain"), code


def _fmt_time(t: float | None) -> str:
    try:
        return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%d %H:%M:%S UTC") if t else "-"
    except (ValueError, OverflowError, OSError):  # a stored time far outside the calendar
        return "-"


def _fmt_duration(seconds: float | None) -> str:
    """A duration as people write it: 45 s, 3 min 20 s, 2 h 05 min, 3 d 4 h."""
    if seconds is None:
        return "-"
    seconds = max(0.0, seconds)  # a clock a little ahead elsewhere
    s = round(seconds)
    if s < 60:
        return f"{seconds:.1f} s" if seconds < 10 else f"{s} s"
    m, s = divmod(s, 60)
    if m < 60:
        return f"{m} min {s:02d} s"
    h, m = divmod(m, 60)
    if h < 24:
        return f"{h} h {m:02d} min"
    d, h = divmod(h, 24)
    return f"{d} d {h} h"


def _plots(data: dict[str, Any]) -> dict[str, Markup]:
    """Every plot of the status page, from the overview's data (cached per data version)."""
    runs = [
        [r["checkpoint"], r["loss"], r["policy_loss"], r["value_loss"]]
        for r in data["training_runs"]
        if isinstance(r["checkpoint"], int)
        and None not in (r["loss"], r["policy_loss"], r["value_loss"])
    ]
    curve = data["ratings"] or []
    rated = [[e["checkpoint"], e["rating"], e["low"], e["high"]] for e in curve if "rating" in e]
    metrics = ("policy_ce", "value_mse", "value_sign_acc")
    heldout = [[e["checkpoint"], *(e[m] for m in metrics)] for e in curve if metrics[0] in e]
    drawn = {
        "ratings": plots.plot("ratings", {"curve": rated, "baselines": data["baselines"]}),
        "losses": plots.plot("losses", runs),
        "heldout": plots.plot("heldout", heldout),
        "examples_per_hour": plots.plot("examples_per_hour", data["examples_per_hour"]),
        "examples_per_minute": plots.plot(
            "examples_per_minute", data["examples"]["examples_per_minute"]
        ),
    }
    # matplotlib's SVG of numbers and escaped text (plots.py): safe markup.
    return {k: Markup(v) for k, v in drawn.items()}


def _move_dict(ex: hexz_pb2.TrainingExample) -> dict[str, Any] | None:
    if not ex.HasField("move"):
        return None
    m = ex.move
    names = hexz_pb2.Field.CellType
    return {
        "player_num": m.player_num,
        "move": m.move,
        "row": m.row,
        "col": m.col,
        "cell_type": names.Name(m.cell_type) if m.cell_type in names.values() else m.cell_type,
    }


def _example_view(i: int, ex: hexz_pb2.TrainingExample) -> dict[str, Any]:
    """Template data for one example; whatever is wrong with a stored example is shown as
    an error on the page, not a 500."""
    view: dict[str, Any] = {
        "index": i,
        "turn": ex.turn,
        "result": finite(ex.result),
        "time": ex.unix_micros / 1e6 if ex.unix_micros else None,
        "move": _move_dict(ex),
        "value": finite(ex.model_predictions.value) if ex.HasField("model_predictions") else None,
        "model": f"{ex.model_key.name}:{ex.model_key.checkpoint}"
        if ex.HasField("model_key")
        else "-",
        "svg": None,
        "error": None,
        "top_moves": [],
    }
    try:
        board = decode_array(ex.board, ex.encoding, "board")
        probs = decode_array(ex.move_probs, ex.encoding, "move_probs")
        move = None
        if ex.HasField("move"):
            typ = 0 if ex.move.cell_type == hexz_pb2.Field.FLAG else 1
            move = (typ, ex.move.row, ex.move.col)
        drawing = svg.BoardDrawing(board=board, move_probs=probs, move=move)
        view["svg"] = Markup(svg.board_svg(drawing, title=f"example {i}"))
        flat = probs.reshape(-1)
        for k in np.argsort(-flat)[:5]:
            if flat[k] > 0:
                typ, cell = divmod(int(k), CELLS)
                view["top_moves"].append(
                    {
                        "kind": "flag" if typ == 0 else "piece",
                        "r": cell // COLS,
                        "c": cell % COLS,
                        "p": float(flat[k]),
                    }
                )
    except Exception as e:  # a bad stored example must not take the page down
        log.warning("cannot draw stored example %d: %s", i, e)
        view["error"] = str(e)
    return view


def make_http_server(
    app: Flask, host: str, port: int, threads: int, channel_timeout_s: int = CHANNEL_TIMEOUT_S
) -> Any:
    """A waitress server (not yet running) with `threads` worker threads.

    Requests beyond the threads queue in waitress's bounded backlog; the CPU player's
    own limit (max_concurrent_suggestions) is below `threads` so that status pages and
    health checks stay responsive while searches run.
    """
    from waitress.server import create_server

    return create_server(
        app,
        host=host,
        port=port,
        threads=threads,
        connection_limit=CONNECTION_LIMIT,
        channel_timeout=channel_timeout_s,
        cleanup_interval=CLEANUP_INTERVAL_S,
        # Bodies beyond what the app accepts are refused (413) before they are read,
        # instead of being buffered to a temporary file first.
        max_request_body_size=MAX_BODY_BYTES,
        asyncore_use_poll=True,
        ident="hexz",
        clear_untrusted_proxy_headers=True,
    )
