"""gRPC services: TrainingService for the original C++ workers, CPUPlayerService.

What an unmodified original worker relies on: FetchModel without a model key returns
the latest checkpoint as TorchScript; AddTrainingExamples gets one request per finished
game (PYTORCH-encoded arrays) and every reply names `latest_model`; any status but
ACCEPTED makes the worker stop sending. "Latest" is the checkpoint self-play plays with
(hexz_tasks.model_source): the newest one, or under promotion gating the promoted one.
Control events come from the Redis events channel, so a training on any machine reaches
every subscribed worker.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from collections.abc import Iterator
from concurrent import futures

import grpc
import numpy as np
import redis

from hexz_tasks import hexz_pb2, hexz_pb2_grpc
from hexz_tasks.examples import BOARD_SHAPE, MASK_SHAPE, decode_array, npy_bytes
from hexz_tasks.server.player import Busy, ClientError, Unavailable
from hexz_tasks.server.state import NotFound, ServerState
from hexz_tasks.store import StoreFullError

log = logging.getLogger(__name__)

Status = hexz_pb2.AddTrainingExamplesResponse.Status
# Big enough for any checkpoint we make (a 5x128 conv2d TorchScript file is ~3 MB).
MAX_MESSAGE_BYTES = 256 * 1024 * 1024
# Polling interval of a ControlEvents stream; bounds how long a cancelled stream lingers.
EVENT_POLL_S = 0.5


def check_example(ex: hexz_pb2.TrainingExample, i: int) -> hexz_pb2.TrainingExample:
    """A validated copy of `ex` with NUMPY-encoded arrays; ValueError names the problem."""
    what = f"examples[{i}]"
    if ex.encoding not in (hexz_pb2.TrainingExample.NUMPY, hexz_pb2.TrainingExample.PYTORCH):
        raise ValueError(f"{what}: unknown encoding {ex.encoding}")
    board = _array(ex.board, ex.encoding, f"{what}.board", BOARD_SHAPE, np.float32)
    if ((board != np.round(board)) | (board < 0) | (board > 5)).any():
        raise ValueError(f"{what}.board has entries that are not whole numbers in 0..5")
    probs = _array(ex.move_probs, ex.encoding, f"{what}.move_probs", MASK_SHAPE, np.float32)
    if (probs < 0).any() or abs(float(probs.sum()) - 1.0) > 1e-3:
        raise ValueError(f"{what}.move_probs must be >= 0 and sum to 1, sum is {probs.sum():.4f}")
    if ex.result not in (-1.0, 0.0, 1.0):
        raise ValueError(f"{what}.result must be -1, 0 or 1, got {ex.result}")
    if ex.turn not in (0, 1):
        raise ValueError(f"{what}.turn must be 0 or 1, got {ex.turn}")
    out = hexz_pb2.TrainingExample()
    out.CopyFrom(ex)
    out.encoding = hexz_pb2.TrainingExample.NUMPY
    out.board = npy_bytes(board)
    out.move_probs = npy_bytes(probs)
    if ex.action_mask:
        mask = _array(ex.action_mask, ex.encoding, f"{what}.action_mask", MASK_SHAPE, np.bool_)
    else:
        # Workers that leave the mask out: the legal moves of the player to move, who
        # is player 0 of this board's view.
        from hexz_tasks.engine import Board

        try:
            mask = Board.from_tensor(board).action_mask(0)
        except ValueError as e:
            raise ValueError(f"{what}.board is not a possible board: {e}") from None
    if float(probs[~mask].sum()) > 0:
        raise ValueError(f"{what}.move_probs puts weight on moves the action_mask forbids")
    out.action_mask = npy_bytes(mask)
    if ex.HasField("model_predictions") and ex.model_predictions.priors:
        priors = _array(
            ex.model_predictions.priors,
            ex.encoding,
            f"{what}.model_predictions.priors",
            MASK_SHAPE,
            np.float32,
        )
        out.model_predictions.priors = npy_bytes(priors)
    return out


def _array(data: bytes, encoding: int, what: str, shape: tuple, dtype: type) -> np.ndarray:
    if not data:
        raise ValueError(f"{what} is missing")
    if encoding == hexz_pb2.TrainingExample.NUMPY and not data.startswith(b"\x93NUMPY"):
        raise ValueError(f"{what} is not a .npy file (the example says encoding NUMPY)")
    try:
        a = decode_array(data, encoding, what)
    except ValueError as e:
        # torch's refusals run over many lines with terminal colour codes: keep the gist.
        first = re.sub(r"\x1b\[[0-9;]*m", "", str(e)).split("\n")[0]
        raise ValueError(first[:300]) from None
    if a.shape != shape:
        raise ValueError(f"{what} must have shape {shape}, got {a.shape}")
    if dtype is np.bool_:
        if a.dtype != np.bool_ and not np.isin(a, (0, 1)).all():
            raise ValueError(f"{what} must be boolean, got {a.dtype} with other values")
        return a.astype(np.bool_)
    if not np.issubdtype(a.dtype, np.floating):
        raise ValueError(f"{what} must be floating point, got {a.dtype}")
    if not np.isfinite(a).all():
        raise ValueError(f"{what} has NaN or infinite values")
    return a.astype(dtype)


class TrainingService(hexz_pb2_grpc.TrainingServiceServicer):
    def __init__(self, state: ServerState) -> None:
        self.state = state

    def AddTrainingExamples(
        self, request: hexz_pb2.AddTrainingExamplesRequest, context: grpc.ServicerContext
    ) -> hexz_pb2.AddTrainingExamplesResponse:
        st = self.state
        resp = hexz_pb2.AddTrainingExamplesResponse()
        try:
            latest = st.selfplay_model_key()
        except (Unavailable, redis.RedisError) as e:
            context.abort(grpc.StatusCode.UNAVAILABLE, str(e))
        resp.latest_model.CopyFrom(latest)
        if not request.examples:
            return _rejected(resp, Status.REJECTED_OTHER, "request has no examples")
        name = st.settings.model_name
        for i, ex in enumerate(request.examples):
            if ex.HasField("model_key") and ex.model_key.name and ex.model_key.name != name:
                return _rejected(
                    resp,
                    Status.REJECTED_WRONG_MODEL,
                    f"examples[{i}] was made by model {ex.model_key.name!r}; "
                    f"this server trains {name!r}",
                )
        try:
            examples = [check_example(ex, i) for i, ex in enumerate(request.examples)]
        except ValueError as e:
            return _rejected(resp, Status.REJECTED_OTHER, str(e))
        # A retried request has the same bytes, so the same id: stored once.
        batch_id = (
            "grpc-" + hashlib.sha256(request.SerializeToString(deterministic=True)).hexdigest()
        )
        try:
            st.add_examples(batch_id, examples)
        except StoreFullError as e:
            return _rejected(resp, Status.REJECTED_AT_CAPACITY, str(e))
        except ValueError as e:  # the store's own checks (e.g. impossible boards)
            return _rejected(resp, Status.REJECTED_OTHER, str(e))
        except redis.RedisError as e:
            context.abort(grpc.StatusCode.UNAVAILABLE, f"example store unavailable: {e}")
        resp.status = Status.ACCEPTED
        return resp

    def FetchModel(
        self, request: hexz_pb2.FetchModelRequest, context: grpc.ServicerContext
    ) -> hexz_pb2.FetchModelResponse:
        enc = hexz_pb2.ModelEncoding
        name, checkpoint, encoding = self.state.settings.model_name, -1, enc.JIT_SCRIPT
        if request.HasField("model_key"):
            name = request.model_key.name or name
            checkpoint = request.model_key.checkpoint
            encoding = request.encoding
        if encoding not in (enc.JIT_SCRIPT, enc.STATE_DICT):
            context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"encoding {enc.Enum.Name(encoding) if encoding in enc.Enum.values() else encoding}"
                " is not supported: ask for JIT_SCRIPT or STATE_DICT",
            )
        if checkpoint < -1:
            context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"checkpoint must be >= 0 or -1 (latest), got {checkpoint}",
            )
        try:
            cp, data = self.state.model_bytes(name, checkpoint, encoding == enc.JIT_SCRIPT)
        except ValueError as e:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(e))
        except NotFound as e:
            context.abort(grpc.StatusCode.NOT_FOUND, str(e))
        except (Unavailable, redis.RedisError) as e:
            context.abort(grpc.StatusCode.UNAVAILABLE, str(e))
        return hexz_pb2.FetchModelResponse(
            model_key=hexz_pb2.ModelKey(name=name, checkpoint=cp),
            model_bytes=data,
            encoding=encoding,
        )

    def ControlEvents(
        self, request: hexz_pb2.ControlRequest, context: grpc.ServicerContext
    ) -> Iterator[hexz_pb2.ControlEvent]:
        pubsub = self.state.redis.pubsub(ignore_subscribe_messages=True)
        try:
            pubsub.subscribe(self.state.keys.events_channel)
            while context.is_active():
                msg = pubsub.get_message(timeout=EVENT_POLL_S)
                if msg is None:
                    continue
                event = _control_event(msg.get("data"))
                if event is not None:
                    yield event
        except redis.RedisError as e:
            # The worker reconnects; events sent while Redis was away are lost anyway.
            context.abort(grpc.StatusCode.UNAVAILABLE, f"events channel unavailable: {e}")
        finally:
            pubsub.close()


def _control_event(data: object) -> hexz_pb2.ControlEvent | None:
    try:
        kind = json.loads(data)["event"]  # type: ignore[arg-type]
    except (TypeError, ValueError, KeyError):
        log.warning("ignoring malformed event on the events channel: %r", data)
        return None
    if kind == "training_started":
        return hexz_pb2.ControlEvent(training_started=hexz_pb2.ControlEvent.TrainingStarted())
    if kind == "training_done":
        return hexz_pb2.ControlEvent(training_done=hexz_pb2.ControlEvent.TrainingDone())
    return None  # other events are not for the C++ workers


def _rejected(
    resp: hexz_pb2.AddTrainingExamplesResponse, status: int, message: str
) -> hexz_pb2.AddTrainingExamplesResponse:
    log.info("rejected AddTrainingExamples: %s", message)
    resp.status = status  # type: ignore[assignment]
    resp.error_message = message
    return resp


class CPUPlayerService(hexz_pb2_grpc.CPUPlayerServiceServicer):
    def __init__(self, state: ServerState) -> None:
        self.state = state

    def SuggestMove(
        self, request: hexz_pb2.SuggestMoveRequest, context: grpc.ServicerContext
    ) -> hexz_pb2.SuggestMoveResponse:
        try:
            out = self.state.player.suggest(request.SerializeToString())
        except ClientError as e:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(e))
        except Busy as e:
            context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, str(e))
        except (Unavailable, redis.RedisError) as e:
            context.abort(grpc.StatusCode.UNAVAILABLE, str(e))
        return hexz_pb2.SuggestMoveResponse.FromString(out)


def make_grpc_server(
    state: ServerState, host: str, port: int, max_workers: int = 64
) -> tuple[grpc.Server, int]:
    """A started gRPC server with both services; returns it and the bound port.

    Each ControlEvents stream holds a worker thread; calls beyond `max_workers` get
    RESOURCE_EXHAUSTED instead of queueing behind streams that never end.
    """
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="grpc"),
        maximum_concurrent_rpcs=max_workers,
        options=[
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
        ],
    )
    hexz_pb2_grpc.add_TrainingServiceServicer_to_server(TrainingService(state), server)
    hexz_pb2_grpc.add_CPUPlayerServiceServicer_to_server(CPUPlayerService(state), server)
    bound = server.add_insecure_port(f"{host}:{port}")
    if bound == 0:
        raise OSError(f"cannot bind the gRPC server to {host}:{port}")
    server.start()
    return server, bound
