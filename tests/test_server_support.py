"""Shared pieces of the server tests (no tests here): a running server pair on free
loopback ports with its own redis-server, and real boards and examples to send it."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
import redis
from conftest import TEST_PREFIX, RedisServer

from hexz_tasks import hexz_pb2, hexz_pb2_grpc
from hexz_tasks.engine import Board, encode_proto
from hexz_tasks.examples import npy_bytes, torch_bytes
from hexz_tasks.keys import Keys
from hexz_tasks.server import Servers, start_servers
from hexz_tasks.settings import Settings
from hexz_tasks.store import ExampleStore

CellType = hexz_pb2.Field.CellType
NUMPY = hexz_pb2.TrainingExample.NUMPY
PYTORCH = hexz_pb2.TrainingExample.PYTORCH


def tiny_settings(data_dir: Path, redis_url: str, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "redis_url": redis_url,
        "data_dir": data_dir,
        "key_prefix": TEST_PREFIX,
        "model_blocks": 1,
        "model_filters": 8,
        "batch_size": 16,
        "num_epochs": 1,
        "training_trigger_threshold": 20,
        "max_think_time_ms": 10_000,
        "max_suggest_iterations": 200,
        "max_concurrent_suggestions": 2,
        "inference_threads": 1,
    }
    values.update(overrides)
    return Settings.from_env({}, **values)


@dataclass
class Running:
    settings: Settings
    servers: Servers
    redis: redis.Redis
    keys: Keys

    @property
    def http(self) -> str:
        return f"http://127.0.0.1:{self.servers.http_port}"

    @property
    def grpc_target(self) -> str:
        return f"127.0.0.1:{self.servers.grpc_port}"

    def channel(self) -> grpc.Channel:
        return grpc.insecure_channel(
            self.grpc_target, options=[("grpc.max_receive_message_length", 64 << 20)]
        )

    def training_stub(self, channel: grpc.Channel) -> hexz_pb2_grpc.TrainingServiceStub:
        return hexz_pb2_grpc.TrainingServiceStub(channel)

    def counters(self) -> dict[str, int]:
        return self.servers.state.store.counters()

    def stream_len(self) -> int:
        return int(self.redis.xlen(self.keys.examples_stream))


def run_servers(tmp_path_factory: pytest.TempPathFactory, **overrides: Any) -> Iterator[Running]:
    """Redis + HTTP + gRPC servers, started in this process on free ports (for a
    module-scoped fixture); `overrides` change tiny_settings."""
    tmp = tmp_path_factory.mktemp("server")
    rs = RedisServer(tmp / "redis")
    rs.start()
    settings = tiny_settings(tmp / "data", rs.url, **overrides)
    client = rs.client()
    # What the trainer's first tick does: set up the stream the gRPC service adds to.
    ExampleStore(client, Keys(settings.key_prefix)).rebase(None, 0)
    servers = start_servers(settings, host="127.0.0.1", port=0, grpc_port=0, client=client)
    try:
        yield Running(settings, servers, client, Keys(settings.key_prefix))
    finally:
        servers.stop()
        rs.stop()


def add(
    running: Running,
    examples: list,
    execution_id: str = "exec-1",
    compression: grpc.Compression | None = None,
) -> hexz_pb2.AddTrainingExamplesResponse:
    with running.channel() as ch:
        return running.training_stub(ch).AddTrainingExamples(
            hexz_pb2.AddTrainingExamplesRequest(examples=examples, execution_id=execution_id),
            timeout=30,
            compression=compression,
        )


def latest(running: Running) -> tuple[str, int]:
    """The newest model: published in Redis, else (before any training) on disk."""
    raw = running.redis.get(running.keys.latest_model)
    if raw is None:
        return running.settings.model_name, running.servers.state.repo.latest_checkpoint()
    d = json.loads(raw)
    return d["name"], d["checkpoint"]


# ------------------------------------------------------------------- boards


def suggest_request(
    board: Board, player: int, move_number: int = 0, think_ms: int = 0, iterations: int = 30
) -> hexz_pb2.SuggestMoveRequest:
    return hexz_pb2.SuggestMoveRequest(
        game_engine_state=encode_proto(board, player, move_number),
        max_think_time_ms=think_ms,
        max_iterations=iterations,
    )


def midgame_board(seed: int, moves: int = 10) -> tuple[Board, int]:
    """A board after `moves` random moves, and the player to move."""
    rng = np.random.default_rng(seed)
    board = Board.random(seed)
    player = 0
    for _ in range(moves):
        if not board.has_legal_move(player):
            player = 1 - player
            if not board.has_legal_move(player):
                break
        legal = board.legal_moves(player)
        board.make_move(player, legal[int(rng.integers(len(legal)))])
        player = 1 - player
    if not board.has_legal_move(player):
        player = 1 - player
    return board, player


def finished_board(seed: int) -> Board:
    """A board where neither player has a legal move."""
    board = Board.random(seed)
    board.random_playout(0, seed=seed)
    assert not board.has_legal_move(0) and not board.has_legal_move(1)
    return board


# ----------------------------------------------------------------- examples


def game_examples(
    seed: int, encoding: int = NUMPY, model_key: hexz_pb2.ModelKey | None = None
) -> list[hexz_pb2.TrainingExample]:
    """Examples of one random game, as a worker would send them: each position from the
    view of the player to move, visit-count-like move_probs over the legal moves."""
    enc = npy_bytes if encoding == NUMPY else torch_bytes
    rng = np.random.default_rng(seed)
    board = Board.random(seed)
    player, examples = 0, []
    for n in range(200):
        if not board.has_legal_move(player):
            player = 1 - player
            if not board.has_legal_move(player):
                break
        mask = board.action_mask(player)  # (2, 11, 10) bool
        counts = np.zeros(mask.shape, dtype=np.float32)
        counts[mask] = rng.integers(1, 5, size=int(mask.sum()))
        probs = (counts / counts.sum()).astype(np.float32)
        legal = board.legal_moves(player)
        move = legal[int(rng.integers(len(legal)))]
        ex = hexz_pb2.TrainingExample(
            unix_micros=int(time.time() * 1e6) + n,
            board=enc(board.tensor(player)),
            move_probs=enc(probs),
            action_mask=enc(mask),
            encoding=encoding,
            turn=player,
            move=hexz_pb2.GameEngineMove(
                player_num=player + 1,
                move=n,
                row=move[1],
                col=move[2],
                cell_type=CellType.Value("FLAG") if move[0] == 0 else CellType.Value("NORMAL"),
            ),
        )
        if model_key is not None:
            ex.model_key.CopyFrom(model_key)
        examples.append(ex)
        board.make_move(player, move)
        player = 1 - player
    result = board.result()  # player 0's view
    for ex in examples:
        ex.result = float(result if ex.turn == 0 else -result)
    return examples
