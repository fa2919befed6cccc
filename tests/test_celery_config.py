"""The Celery configuration, the Procfile, the embedded Redis, the feeder and the status
report, each against real parts (a private redis-server, real subprocesses)."""

from __future__ import annotations

import base64
import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
from pathlib import Path

import pytest
import redis
import requests
from conftest import REPO_ROOT, TEST_PREFIX, Procs, RedisServer, free_port, tiny_env, wait_for
from honcho.environ import parse_procfile
from synthetic import game_columns

from hexz_tasks.celery import celery_config, make_app
from hexz_tasks.credentials import embedded_redis_password
from hexz_tasks.feeder import feed_selfplay_queue
from hexz_tasks.keys import Keys
from hexz_tasks.launcher import PROCESSES, QUICKSTART, pipeline_env
from hexz_tasks.queues import (
    ARENA_TASK,
    EVAL_QUEUE,
    EVALUATE_TASK,
    FEED_ENTRY,
    GPU_QUEUE,
    SELFPLAY_QUEUE,
    SELFPLAY_TASK,
    TRAIN_TASK,
)
from hexz_tasks.rates import record_game
from hexz_tasks.redis_server import EMBEDDED_PORT, masked_url, redis_url
from hexz_tasks.settings import SLICE_OVERRUN_S, Settings, SettingsError
from hexz_tasks.status import gather_status, print_status
from hexz_tasks.store import ExampleStore
from hexz_tasks.worker_registry import forget_dead_local_tasks


def settings_for(url: str | None = None, **overrides: object) -> Settings:
    return Settings.from_env({}, redis_url=url, key_prefix=TEST_PREFIX, **overrides)


# ------------------------------------------------------------------- configuration


def test_one_redis_url_for_broker_and_backend_and_json_only() -> None:
    conf = celery_config(settings_for("redis://:pw@example.org:6400/3"))
    assert conf["broker_url"] == conf["result_backend"] == "redis://:pw@example.org:6400/3"
    assert conf["accept_content"] == conf["result_accept_content"] == ["json"]
    assert conf["task_serializer"] == conf["result_serializer"] == "json"


def test_embedded_redis_is_the_default_url_with_a_generated_password(tmp_path: Path) -> None:
    settings = settings_for(data_dir=tmp_path / "data")
    url = redis_url(settings)
    password_file = tmp_path / "data" / "redis" / "password"
    password = password_file.read_text().strip()
    assert len(password) >= 24
    assert url == f"redis://:{password}@127.0.0.1:{EMBEDDED_PORT}/0"
    assert password_file.stat().st_mode & 0o777 == 0o600
    # Every later process finds the same password; the broker uses it too.
    assert redis_url(settings_for(data_dir=tmp_path / "data")) == url
    assert celery_config(settings)["broker_url"] == url
    assert redis_url(settings_for(data_dir=tmp_path / "other")) != url


def test_reliability_settings_and_limits_below_the_visibility_timeout() -> None:
    conf = celery_config(
        settings_for(task_time_limit_s=100, training_time_limit_s=120, visibility_timeout_s=130)
    )
    assert conf["task_acks_late"] and conf["task_reject_on_worker_lost"]
    assert conf["worker_prefetch_multiplier"] == 1
    assert conf["task_soft_time_limit"] < conf["task_time_limit"] == 100
    for place in (
        conf["broker_transport_options"]["visibility_timeout"],
        conf["result_backend_transport_options"]["visibility_timeout"],
        conf["visibility_timeout"],
    ):
        assert place == 130
    assert conf["result_expires"] > 0
    assert conf["worker_cancel_long_running_tasks_on_connection_loss"] is True
    assert conf["broker_connection_retry_on_startup"] is True


def test_ticks_are_acknowledged_on_receipt_and_slices_late() -> None:
    """A broker reconnect cancels the running late-acknowledged tasks (their messages come
    back): fine for a slice or a match, not for an hour of training."""
    from hexz_tasks import arena_tasks, tasks

    assert not tasks.train.acks_late and not tasks.train.reject_on_worker_lost
    assert not arena_tasks.evaluate.acks_late
    assert tasks.selfplay.acks_late and tasks.selfplay.reject_on_worker_lost
    assert arena_tasks.match.acks_late


def test_time_limit_must_stay_below_the_visibility_timeout() -> None:
    with pytest.raises(SettingsError, match="HEXZ_TASK_TIME_LIMIT_S"):
        Settings.from_env({"HEXZ_TASK_TIME_LIMIT_S": "600", "HEXZ_VISIBILITY_TIMEOUT_S": "500"})


def test_routes_and_beat_schedule() -> None:
    conf = celery_config(settings_for(training_check_interval_s=7))
    assert conf["task_routes"] == {
        SELFPLAY_TASK: {"queue": SELFPLAY_QUEUE},
        TRAIN_TASK: {"queue": GPU_QUEUE},
        ARENA_TASK: {"queue": EVAL_QUEUE},
        EVALUATE_TASK: {"queue": EVAL_QUEUE},
    }
    train = conf["beat_schedule"]["train"]
    assert train["task"] == TRAIN_TASK and train["schedule"] == 7
    assert train["options"] == {"queue": GPU_QUEUE, "expires": 7}
    assert conf["beat_schedule"]["feed-selfplay"]["task"] == FEED_ENTRY
    evaluate = conf["beat_schedule"]["evaluate-checkpoints"]
    # Evaluation ticks have a queue (and a worker) of their own: never behind self-play.
    assert evaluate["task"] == EVALUATE_TASK and evaluate["options"]["queue"] == EVAL_QUEUE
    assert conf["beat_scheduler"] == "hexz_tasks.celery:Scheduler"


def test_rediss_url_verifies_certificates_unless_the_url_says_otherwise() -> None:
    conf = celery_config(settings_for("rediss://:pw@example.org:6380/0"))
    assert conf["broker_use_ssl"] == {"ssl_cert_reqs": ssl.CERT_REQUIRED}
    assert conf["redis_backend_use_ssl"] == {"ssl_cert_reqs": ssl.CERT_REQUIRED}
    # The backend accepts it (it validates TLS options without connecting).
    app = make_app(settings_for("rediss://:pw@example.org:6380/0"))
    assert app.backend.connparams["ssl_cert_reqs"] == ssl.CERT_REQUIRED
    app.close()
    explicit = celery_config(settings_for("rediss://example.org:6380/0?ssl_cert_reqs=none"))
    assert "broker_use_ssl" not in explicit and "redis_backend_use_ssl" not in explicit


def test_masked_url_hides_the_password() -> None:
    assert masked_url("redis://:s3cret@h:1/0") == "redis://:***@h:1/0"
    assert masked_url("rediss://user:s3cret@h:1/0") == "rediss://user:***@h:1/0"
    assert masked_url("redis://h:1/0") == "redis://h:1/0"


def test_procfile_lists_exactly_the_launcher_processes() -> None:
    procfile = parse_procfile((REPO_ROOT / "Procfile").read_text()).processes
    assert dict(procfile) == PROCESSES
    assert sum("beat" in cmd for cmd in procfile.values()) == 1
    assert "-c 1" in procfile["gpu"] and "-Q gpu" in procfile["gpu"]
    assert "-Q selfplay" in procfile["selfplay"] and "-P prefork" in procfile["selfplay"]
    assert "-Q eval" in procfile["eval"] and "-c 1" in procfile["eval"]


def test_quickstart_settings_fill_only_what_is_unset() -> None:
    env = pipeline_env({"HEXZ_RUNS_PER_MOVE": "5", "PATH": "/bin"})
    assert env["HEXZ_RUNS_PER_MOVE"] == "5"
    assert env["HEXZ_MODEL_FILTERS"] == QUICKSTART["HEXZ_MODEL_FILTERS"]
    Settings.from_env({k: v for k, v in env.items() if k.startswith("HEXZ_")})  # all valid


def test_the_plain_modules_do_not_import_the_celery_app() -> None:
    """Thin tasks: the self-play loop, the feeder, the training tick and what they use run
    (and are tested) without the Celery app, and the app never imports them back."""
    plain = [
        "feeder", "training_tick", "selfplay_worker", "model_source", "worker_registry",
        "rates", "status", "evaluation", "stop_flag", "queues",
    ]  # fmt: skip
    code = (
        f"import sys, {', '.join('hexz_tasks.' + m for m in plain)}; "
        "print(sorted(m for m in ('hexz_tasks.celery', 'hexz_tasks.tasks') if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


# --------------------------------------------------------------------- processes


def test_flower_binds_localhost_and_requires_basic_auth(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    port = free_port()
    env = tiny_env(redis_server.url, tmp_path, flower_basic_auth="admin:pw")
    env["FLOWER_PORT"] = str(port)
    log = open(tmp_path / "flower.log", "wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "hexz_tasks", "flower"],
        env=env,
        cwd=REPO_ROOT,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:

        def answers() -> int | None:
            try:
                return requests.get(f"http://127.0.0.1:{port}/", timeout=2).status_code
            except requests.ConnectionError:
                assert proc.poll() is None, (tmp_path / "flower.log").read_text()
                return None

        assert wait_for(answers, 60, "flower") == 401
        ok = requests.get(f"http://127.0.0.1:{port}/workers", auth=("admin", "pw"), timeout=5)
        assert ok.status_code == 200
        # Bound to 127.0.0.1 only: another local address of this machine is refused.
        with socket.socket() as s:
            s.settimeout(2)
            assert s.connect_ex(("127.0.0.2", port)) != 0
    finally:
        proc.terminate()
        proc.wait(20)
        log.close()


def test_hexz_redis_idles_when_an_external_redis_is_configured(tmp_path: Path) -> None:
    env = tiny_env("redis://:pw@127.0.0.1:1/0", tmp_path)
    proc = subprocess.Popen(
        [sys.executable, "-m", "hexz_tasks.cli", "redis"],
        env=env,
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    time.sleep(3)
    assert proc.poll() is None, "honcho would stop every process if this one exited"
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=10)
    assert proc.returncode == 0
    assert "HEXZ_REDIS_URL is set (redis://:***@127.0.0.1:1/0)" in out


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) != 0


def test_hexz_redis_runs_the_embedded_server_with_aof_in_the_data_dir(tmp_path: Path) -> None:
    if not _port_free(EMBEDDED_PORT):
        pytest.skip(f"port {EMBEDDED_PORT} is in use (a `hexz run` on this machine?)")
    env = {k: v for k, v in tiny_env("", tmp_path / "data").items() if k != "HEXZ_REDIS_URL"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "hexz_tasks.cli", "redis"], env=env, cwd=REPO_ROOT
    )
    try:
        password = embedded_redis_password(tmp_path / "data")
        client = redis.Redis(port=EMBEDDED_PORT, password=password, socket_connect_timeout=1)

        def up() -> bool:
            try:
                return bool(client.ping())
            except redis.ConnectionError:
                assert proc.poll() is None, "hexz redis exited"
                return False

        wait_for(up, 30, "the embedded redis-server")
        # Only with the generated password, which no process listing shows.
        with pytest.raises(redis.AuthenticationError):
            redis.Redis(port=EMBEDDED_PORT, socket_connect_timeout=1).ping()
        assert password.encode() not in Path(f"/proc/{proc.pid}/cmdline").read_bytes()
        config = {**client.config_get("appendonly"), **client.config_get("maxmemory-policy")}
        assert config == {"appendonly": "yes", "maxmemory-policy": "noeviction"}
        assert client.config_get("bind")["bind"] == "127.0.0.1"
        assert Path(client.config_get("dir")["dir"]) == (tmp_path / "data" / "redis").resolve()
        client.set("k", "v")
        assert list((tmp_path / "data" / "redis").rglob("*.aof"))
    finally:
        proc.terminate()
        proc.wait(20)


@pytest.mark.slow
def test_ctrl_c_on_hexz_run_stops_everything_without_a_traceback_and_redis_last(
    tmp_path: Path,
) -> None:
    ports = (EMBEDDED_PORT, 8080, 50051, 5555)  # hexz run's fixed ports
    if not all(_port_free(p) for p in ports):
        pytest.skip(f"one of the ports {ports} is in use (a `hexz run` on this machine?)")
    env = {k: v for k, v in tiny_env("", tmp_path / "data").items() if k != "HEXZ_REDIS_URL"}
    log = open(tmp_path / "run.log", "wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "hexz_tasks.cli", "run"],
        env=env,
        cwd=REPO_ROOT,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # a terminal's foreground group: Ctrl-C reaches only it
    )
    try:
        settings = Settings.from_env({k: v for k, v in env.items() if k.startswith("HEXZ_")})
        r = redis.Redis(
            port=EMBEDDED_PORT,
            password=embedded_redis_password(settings.data_dir),
            socket_connect_timeout=1,
        )

        def playing() -> bool:
            assert proc.poll() is None, (tmp_path / "run.log").read_text()[-3000:]
            try:
                return ExampleStore(r, Keys(settings.key_prefix)).counters()["games"] > 0
            except redis.ConnectionError:
                return False

        wait_for(playing, 180, "hexz run to store games")
        proc.send_signal(signal.SIGINT)  # what Ctrl-C in the terminal does
        assert proc.wait(60) == 130
    finally:
        if proc.poll() is None:  # failed: shut it down the way it is meant to be
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(10)
        log.close()
    out = (tmp_path / "run.log").read_text()
    assert "Traceback" not in out and "Error" not in out, out[-5000:]
    stopped = [out.index(f"{name} stopped") for name in PROCESSES if name != "redis"]
    assert max(stopped) < out.index("Redis is now ready to exit"), out[-3000:]
    assert _port_free(EMBEDDED_PORT)


# ------------------------------------------------------------------------- feeder


def _register(r: redis.Redis, keys: Keys, name: str, queues: list[str], n: int, seen: float):
    entry = {"queues": queues, "concurrency": n, "seen": seen}
    r.hset(keys.workers, name, json.dumps(entry))


def test_feeder_keeps_one_slice_waiting_per_selfplay_process(
    redis_server: RedisServer, redis_client: redis.Redis, test_keys: Keys
) -> None:
    settings = settings_for(redis_server.url, selfplay_slice_s=30)
    app = make_app(settings)
    r, keys = redis_client, test_keys
    assert feed_selfplay_queue(app, r, keys, settings) == 0  # no worker, nothing queued
    assert r.llen(keys.queue(SELFPLAY_QUEUE)) == 0

    now = time.time()
    _register(r, keys, "a@h", [SELFPLAY_QUEUE], 3, now)
    _register(r, keys, "gpu@h", [GPU_QUEUE], 1, now)
    _register(r, keys, "dead@h", [SELFPLAY_QUEUE], 8, now - 3600)
    assert feed_selfplay_queue(app, r, keys, settings) == 6  # 2 x 3 processes
    assert r.llen(keys.queue(SELFPLAY_QUEUE)) == 6
    assert not r.hexists(keys.workers, "dead@h")  # stale entries are pruned

    for _ in range(3):  # ticks while nothing is consumed add nothing
        assert feed_selfplay_queue(app, r, keys, settings) == 0
    assert r.llen(keys.queue(SELFPLAY_QUEUE)) == 6

    # Workers took 3 slices and run them; one more finished: room for one.
    for _ in range(4):
        r.rpop(keys.queue(SELFPLAY_QUEUE))
    for i in range(3):
        r.hset(keys.selfplay_running, f"t{i}", json.dumps({"started": now}))
    assert feed_selfplay_queue(app, r, keys, settings) == 1
    # A slice running far past its budget is stale (its process died).
    r.hset(keys.selfplay_running, "t0", json.dumps({"started": now - 31 - SLICE_OVERRUN_S}))
    assert feed_selfplay_queue(app, r, keys, settings) == 1
    assert r.hlen(keys.selfplay_running) == 2

    message = json.loads(r.lindex(keys.queue(SELFPLAY_QUEUE), 0))
    assert message["headers"]["task"] == SELFPLAY_TASK
    assert message["content-type"] == "application/json"
    assert json.loads(base64.b64decode(message["body"]))[0] == [30, 0]  # budget, no game cap
    app.close()


def test_feeder_queues_nothing_while_the_store_is_nearly_full(
    redis_server: RedisServer, redis_client: redis.Redis, test_keys: Keys
) -> None:
    settings = settings_for(redis_server.url, max_pending_examples=100)
    app = make_app(settings)
    r, keys = redis_client, test_keys
    _register(r, keys, "a@h", [SELFPLAY_QUEUE], 2, time.time())
    r.hset(keys.counters, "pending", 90)  # 90 % of the bound wait for the trainer
    assert feed_selfplay_queue(app, r, keys, settings) == 0
    assert r.llen(keys.queue(SELFPLAY_QUEUE)) == 0
    r.hset(keys.counters, "pending", 50)  # the trainer drained some ...
    kept = {"unstored_examples": 60, "updated": time.time()}
    r.hset(keys.selfplay_progress, "p", json.dumps(kept))  # ... but a kept game needs 60
    assert feed_selfplay_queue(app, r, keys, settings) == 0
    r.hset(keys.counters, "pending", 40)  # room for it: slices run and store it first
    assert feed_selfplay_queue(app, r, keys, settings) == 4
    app.close()


def test_beat_sends_no_training_tick_while_a_training_runs(
    redis_server: RedisServer, redis_client: redis.Redis, test_keys: Keys, tmp_path: Path,
    procs: Procs,
) -> None:  # fmt: skip
    """A training may run for hours: its ticks would only pile up in the gpu queue."""
    r, keys = redis_client, test_keys
    r.set(keys.training_active, json.dumps({"checkpoint": 0}), ex=120)
    procs.celery("beat", ["beat", "-l", "INFO"], tiny_env(redis_server.url, tmp_path))
    time.sleep(6)  # six ticks of HEXZ_TRAINING_CHECK_INTERVAL_S
    assert r.llen(keys.queue(GPU_QUEUE)) == 0
    r.delete(keys.training_active)  # the training ended: ticks come again
    wait_for(lambda: r.llen(keys.queue(GPU_QUEUE)) >= 2, 20, "training ticks")


# ------------------------------------------------------------------------- status


def test_gather_status_reports_counts_rates_models_and_training(
    redis_server: RedisServer, redis_client: redis.Redis, test_keys: Keys, tmp_path: Path
) -> None:
    settings = settings_for(redis_server.url, data_dir=tmp_path / "data")
    r, keys = redis_client, test_keys
    store = ExampleStore(r, keys)
    games = game_columns(3, seed=1, runs=4, max_moves=20)
    added = [store.add_game(f"g:{i}", g) for i, g in enumerate(games)]
    now = time.time()
    for n in added:
        record_game(r, keys, n, now=now - 60)  # last complete minute
    r.set(keys.latest_model, json.dumps({"name": "flagz", "checkpoint": 4}))
    r.rpush(keys.training_runs, json.dumps({"checkpoint": 4, "seconds": 1.5}))
    r.set(keys.training_active, json.dumps({"since": now, "checkpoint": 4}))
    r.rpush(keys.queue(SELFPLAY_QUEUE), "x", "y")
    _register(r, keys, "sp@h", [SELFPLAY_QUEUE], 2, now)
    progress = {
        "host": "h", "pid": 7, "state": "playing", "games_in_flight": 16, "games_started": 16,
        "games_finished": 0, "games_stored": 0, "examples_stored": 0, "unstored": 0,
        "unstored_examples": 0, "moves": 120, "moves_per_s": 1.5, "evaluations": 9000,
        "batches": 560, "batch_rows": 8960, "occupancy": 1.0, "checkpoint": 2, "started": now - 60,
        "updated": now - 2,
    }  # fmt: skip
    r.hset(keys.selfplay_progress, "p1", json.dumps(progress))
    r.hset(keys.selfplay_progress, "p2", json.dumps({**progress, "checkpoint": 4}))
    r.hset(keys.selfplay_progress, "gone", json.dumps({**progress, "updated": now - 600}))

    s = gather_status(settings, r, inspect_timeout=0, now=now)
    json.dumps(s)  # serialisable for the web status page
    assert s["examples"]["total"] == s["examples"]["since_training"] == sum(added)
    assert s["examples"]["per_minute"] == pytest.approx(sum(added) / 10)
    assert s["games"] == {"total": 3, "per_minute": pytest.approx(0.3)}
    assert s["model"]["published"] == {"name": "flagz", "checkpoint": 4}
    assert s["model"]["checkpoints_on_disk"] is None
    assert s["training"]["runs"] == 1 and s["training"]["active"]["checkpoint"] == 4
    assert s["queues"] == {SELFPLAY_QUEUE: 2, GPU_QUEUE: 0, EVAL_QUEUE: 0}
    assert s["workers"]["sp@h"]["concurrency"] == 2
    # Self-play progress before any game finished: games in flight, moves, occupancy, and
    # how far behind the newest checkpoint (4) each process plays.
    sp = s["selfplay"]
    assert set(sp["processes"]) == {"p1", "p2"} and not r.hexists(keys.selfplay_progress, "gone")
    assert sp["games_in_flight"] == 32 and sp["moves_per_s"] == 3.0 and sp["occupancy"] == 1.0
    assert sp["checkpoints_behind"] == 2
    assert sp["processes"]["p1"]["checkpoints_behind"] == 2
    assert sp["processes"]["p2"]["checkpoints_behind"] == 0


def test_status_says_clearly_when_redis_is_unreachable(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    settings = settings_for(f"redis://:pw@127.0.0.1:{free_port()}/0", data_dir=tmp_path)
    s = gather_status(settings, redis.Redis(port=1, socket_connect_timeout=0.5))
    assert "cannot reach Redis at redis://:***@127.0.0.1" in s["error"]
    assert print_status(settings) == 1
    out = capsys.readouterr().out
    assert "cannot reach Redis" in out and "hexz run" in out and ":pw@" not in out


def test_a_restarted_worker_forgets_running_tasks_of_dead_local_processes(
    redis_client: redis.Redis, test_keys: Keys
) -> None:
    r, keys = redis_client, test_keys
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    host = socket.gethostname()
    for task_id, entry in {
        "alive": {"host": host, "pid": os.getpid()},
        "dead": {"host": host, "pid": dead.pid},
        "elsewhere": {"host": "another-machine", "pid": dead.pid},
    }.items():
        r.hset(keys.selfplay_running, task_id, json.dumps({"started": time.time(), **entry}))
    assert forget_dead_local_tasks(r, keys) == ["dead"]
    assert sorted(r.hkeys(keys.selfplay_running)) == [b"alive", b"elsewhere"]
