"""A trainer that lost its lock leaves no checkpoint behind: ownership is checked right
before the rename that makes a checkpoint appear, and a training whose lock heartbeat finds
the lock taken stops at its next step (real Redis, real training)."""

from __future__ import annotations

import json
import re
import threading
from pathlib import Path

import pytest
import redis
import torch
from conftest import RedisServer, wait_for, wait_for_examples_to_settle
from synthetic import game_columns

from hexz_tasks.keys import Keys
from hexz_tasks.model import ModelParams, make_model
from hexz_tasks.repository import ModelRepository, NotOwnerError
from hexz_tasks.settings import Settings
from hexz_tasks.store import ExampleStore

PARAMS = ModelParams("conv2d", 1, 8)


def _leftovers(repo: ModelRepository) -> list[str]:
    return sorted(p.name for p in repo.checkpoints_dir.iterdir() if p.name.startswith("."))


@pytest.mark.parametrize("answer", ["no", "raises"])
def test_save_leaves_nothing_when_the_writer_is_no_longer_the_owner(
    tmp_path: Path, answer: str
) -> None:
    repo = ModelRepository(tmp_path, "flagz")
    repo.save(0, make_model(PARAMS), PARAMS)
    asked = []

    def still_owner() -> bool:
        asked.append(sorted(p.name for p in repo.checkpoints_dir.iterdir()))
        if answer == "raises":
            raise redis.ConnectionError("Redis went away")
        return False

    with pytest.raises(NotOwnerError):
        repo.save(1, make_model(PARAMS), PARAMS, still_owner=still_owner)
    # Asked once, after every file was written (the temp dir exists), before the rename.
    assert len(asked) == 1 and asked[0][0].startswith(".tmp-1-")
    assert repo.checkpoints() == [0]
    assert _leftovers(repo) == []
    repo.save(1, make_model(PARAMS), PARAMS, still_owner=lambda: True)
    assert repo.checkpoints() == [0, 1]


def test_a_trainer_whose_lock_expires_mid_training_leaves_no_checkpoint(
    redis_server: RedisServer, redis_client: redis.Redis, tmp_path: Path
) -> None:
    """While the tick trains, its lock passes to another trainer (as when it expires
    and is taken): the tick stops mid-training and fails, and neither checkpoint 1 nor
    the trained counter nor a published model appears."""
    from hexz_tasks.tasks import run_training_tick

    torch.set_num_threads(1)
    keys = Keys("hexzlocktest")
    settings = Settings.from_env(
        {},
        data_dir=tmp_path,
        redis_url=redis_server.url,
        key_prefix=keys.prefix,
        model_blocks=1,
        model_filters=8,
        batch_size=16,
        num_epochs=60,
        training_trigger_threshold=100,
        training_lock_ttl_s=3,  # refreshed, and so found taken, every second
    )
    store = ExampleStore(redis_client, keys, settle_ms=0)
    for i, cols in enumerate(game_columns(8, seed=3, runs=20, max_moves=60)):
        store.add_game(f"g{i}", cols)
    wait_for_examples_to_settle()
    outcome: dict[str, object] = {}

    def tick() -> None:
        try:
            outcome["result"] = run_training_tick(settings, redis_client, keys)
        except Exception as e:  # what the Celery task would report
            outcome["error"] = e

    t = threading.Thread(target=tick)
    t.start()
    wait_for(lambda: redis_client.exists(keys.training_active), 30, "the training to start")
    redis_client.set(keys.training_lock, "another-trainer's-token")
    t.join(120)
    assert not t.is_alive()
    assert isinstance(outcome.get("error"), NotOwnerError), outcome
    stopped = re.search(r"lock lost at step (\d+) of (\d+)", str(outcome["error"]))
    assert stopped and int(stopped[1]) < int(stopped[2])  # at a step, not at its save
    repo = ModelRepository(settings.repo_base_dir, settings.model_name)
    assert repo.checkpoints() == [0]
    assert _leftovers(repo) == []
    assert store.counters()["trained"] == 0
    assert json.loads(redis_client.get(keys.latest_model))["checkpoint"] == 0
