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
import threading
import time
from collections.abc import Iterator
from concurrent import futures

import grpc
import redis

from hexz_tasks import hexz_pb2, hexz_pb2_grpc
from hexz_tasks.server.grpc_guard import Guard, server_credentials
from hexz_tasks.server.player import Busy, Unavailable
from hexz_tasks.server.state import NotFound, ServerState
from hexz_tasks.store import StoreFullError
from hexz_tasks.suggest import MAX_REQUEST_BYTES, ClientError
from hexz_tasks.validation import InvalidExample, validate_examples

log = logging.getLogger(__name__)

Status = hexz_pb2.AddTrainingExamplesResponse.Status
# Replies carry models: big enough for any checkpoint we make (5x128 TorchScript ~3 MB).
MAX_SEND_BYTES = 256 * 1024 * 1024
# Requests are one game's examples (~7-12 kB each, at most a few hundred) or a suggest
# request (a few kB). The limit holds for the decompressed message, so a gzip bomb
# costs the server no more than this.
MAX_RECEIVE_BYTES = 8 * 1024 * 1024
MAX_EXAMPLES_PER_REQUEST = 1000
# Polling interval of a ControlEvents stream; bounds how long a cancelled stream lingers.
EVENT_POLL_S = 0.5
# Server threads beyond the ControlEvents streams, for every other call.
SPARE_GRPC_THREADS = 16


class TrainingService(hexz_pb2_grpc.TrainingServiceServicer):
    def __init__(self, state: ServerState) -> None:
        self.state = state
        self._streams = threading.BoundedSemaphore(state.settings.grpc_max_event_streams)

    def AddTrainingExamples(
        self, request: hexz_pb2.AddTrainingExamplesRequest, context: grpc.ServicerContext
    ) -> hexz_pb2.AddTrainingExamplesResponse:
        st = self.state
        resp = hexz_pb2.AddTrainingExamplesResponse()
        try:
            latest = st.selfplay_model_key()
            newest = st.latest_model_key()  # with promotion gating, newer than `latest`
        except (Unavailable, redis.RedisError) as e:
            context.abort(grpc.StatusCode.UNAVAILABLE, str(e))
        resp.latest_model.CopyFrom(latest)
        if not request.examples:
            return _rejected(resp, Status.REJECTED_OTHER, "request has no examples")
        if len(request.examples) > MAX_EXAMPLES_PER_REQUEST:
            return _rejected(
                resp,
                Status.REJECTED_OTHER,
                f"request has {len(request.examples)} examples, at most "
                f"{MAX_EXAMPLES_PER_REQUEST} are accepted at once",
            )
        name = st.settings.model_name
        for i, ex in enumerate(request.examples):
            if ex.HasField("model_key") and ex.model_key.name and ex.model_key.name != name:
                return _rejected(
                    resp,
                    Status.REJECTED_WRONG_MODEL,
                    f"examples[{i}] was made by model {ex.model_key.name[:80]!r}; "
                    f"this server trains {name!r}",
                )
        try:
            examples = validate_examples(
                request.examples, max_checkpoint=newest.checkpoint if newest.name == name else None
            )
        except InvalidExample as e:
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
        """Events until the client leaves or the stream reaches its maximum age (the
        worker then reconnects). At most `grpc_max_event_streams` at once: each holds a
        server thread, and the threads beyond them stay free for every other call."""
        settings = self.state.settings
        if not self._streams.acquire(blocking=False):
            context.abort(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"all {settings.grpc_max_event_streams} ControlEvents streams are taken; "
                "retry later",
            )
        try:
            yield from self._events(context, settings.grpc_event_stream_max_age_s)
        finally:
            self._streams.release()

    def _events(
        self, context: grpc.ServicerContext, max_age_s: float
    ) -> Iterator[hexz_pb2.ControlEvent]:
        end = time.monotonic() + max_age_s
        pubsub = self.state.redis.pubsub(ignore_subscribe_messages=True)
        try:
            pubsub.subscribe(self.state.keys.events_channel)
            while context.is_active() and time.monotonic() < end:
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
        size = request.ByteSize()
        if size > MAX_REQUEST_BYTES:
            context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"SuggestMoveRequest is {size} bytes, at most {MAX_REQUEST_BYTES} are accepted",
            )
        try:
            out = self.state.player.suggest(request.SerializeToString())
        except ClientError as e:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(e))
        except Busy as e:
            context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, str(e))
        except (Unavailable, redis.RedisError) as e:
            context.abort(grpc.StatusCode.UNAVAILABLE, str(e))
        return hexz_pb2.SuggestMoveResponse.FromString(out)


def make_grpc_server(state: ServerState, host: str, port: int) -> tuple[grpc.Server, int]:
    """A started gRPC server with both services; returns it and the bound port.

    Threads: one per allowed ControlEvents stream plus SPARE_GRPC_THREADS, so streams
    never starve other calls; calls beyond the threads get RESOURCE_EXHAUSTED instead of
    queueing. TLS and the shared-token check (grpc_guard) follow the settings.
    """
    settings = state.settings
    threads = settings.grpc_max_event_streams + SPARE_GRPC_THREADS
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=threads, thread_name_prefix="grpc"),
        interceptors=[Guard(settings.grpc_token)],
        maximum_concurrent_rpcs=threads,
        options=[
            ("grpc.max_send_message_length", MAX_SEND_BYTES),
            ("grpc.max_receive_message_length", MAX_RECEIVE_BYTES),
            # Dead peers (a worker machine that vanished) are found within a minute.
            ("grpc.keepalive_time_ms", 30_000),
            ("grpc.keepalive_timeout_ms", 10_000),
        ],
    )
    hexz_pb2_grpc.add_TrainingServiceServicer_to_server(TrainingService(state), server)
    hexz_pb2_grpc.add_CPUPlayerServiceServicer_to_server(CPUPlayerService(state), server)
    address = f"{host}:{port}"
    creds = server_credentials(settings)
    bound = (
        server.add_secure_port(address, creds)
        if creds is not None
        else server.add_insecure_port(address)
    )
    if bound == 0:
        raise OSError(f"cannot bind the gRPC server to {host}:{port}")
    server.start()
    return server, bound
