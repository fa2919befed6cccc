"""Secrets and defaults: nothing secret is written or shown, Flower never runs without a
login, the TrainingService can require a shared token and TLS, model names stay names."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
import requests
from conftest import Proc, Procs, RedisServer, free_port, tiny_env, wait_for
from test_server_support import Running, midgame_board, run_servers, suggest_request, tiny_settings

from hexz_tasks import hexz_pb2, hexz_pb2_grpc
from hexz_tasks.model import ModelParams, make_model
from hexz_tasks.repository import ModelRepository
from hexz_tasks.server import start_servers
from hexz_tasks.settings import Settings, SettingsError

TOKEN = "a-shared-token-of-some-length"
RIGHT = (("authorization", f"Bearer {TOKEN}"),)
WRONG = (("authorization", "Bearer wrong-token-of-some-length"),)
REDIS_PASSWORD = "redis-pw-never-shown"
FLOWER_AUTH = "admin:flower-pw-never-shown"


def test_settings_written_next_to_a_checkpoint_have_no_secrets(tmp_path: Path) -> None:
    settings = Settings.from_env(
        {},
        redis_url=f"redis://:{REDIS_PASSWORD}@10.0.0.1:6379/0",
        flower_basic_auth=FLOWER_AUTH,
        grpc_token=TOKEN,
    )
    repo = ModelRepository(tmp_path, "flagz")
    params = ModelParams("conv2d", 1, 8)
    repo.save(0, make_model(params), params, settings=settings)
    text = (repo.checkpoint_dir(0) / "settings.json").read_text()
    for secret in (REDIS_PASSWORD, FLOWER_AUTH, TOKEN):
        assert secret not in text
    written = json.loads(text)
    assert written["redis_url"] == "redis://:***@10.0.0.1:6379/0"
    assert written["flower_basic_auth"] == written["grpc_token"] == "***"
    assert written["runs_per_move"] == 800


def test_the_status_page_shows_no_secrets(tmp_path: Path) -> None:
    rs = RedisServer(tmp_path / "redis", password=REDIS_PASSWORD)
    rs.start()
    settings = tiny_settings(
        tmp_path / "data", rs.url, flower_basic_auth=FLOWER_AUTH, grpc_token=TOKEN
    )
    servers = start_servers(settings, port=0, grpc_port=None)
    try:
        base = f"http://127.0.0.1:{servers.http_port}"
        pages = [requests.get(f"{base}{p}", timeout=30) for p in ("/", "/status.json")]
        for page in pages:
            assert page.status_code == 200
            for secret in (REDIS_PASSWORD, FLOWER_AUTH, TOKEN):
                assert secret not in page.text
        shown = pages[1].json()["settings"]
        assert shown["redis_url"] == f"redis://:***@127.0.0.1:{rs.port}/0"
        assert shown["grpc_token"] == "***"
    finally:
        servers.stop()
        rs.stop()


def test_hexz_flower_generates_a_login_once_and_requires_it(
    redis_server: RedisServer, procs: Procs, tmp_path: Path
) -> None:
    env = tiny_env(redis_server.url, tmp_path / "data")
    port = free_port()
    env["FLOWER_PORT"] = str(port)

    def start() -> tuple[Proc, str]:
        proc = procs.start("flower", [sys.executable, "-m", "hexz_tasks.cli", "flower"], env)

        def answers() -> int | None:
            assert proc.alive(), proc.log()
            try:
                return requests.get(f"http://127.0.0.1:{port}/", timeout=2).status_code
            except requests.ConnectionError:
                return None

        assert wait_for(answers, 60, "flower") == 401
        return proc, proc.log()

    proc, log = start()
    path = tmp_path / "data" / "flower-basic-auth"
    user, password = path.read_text().strip().split(":")
    assert path.stat().st_mode & 0o777 == 0o600
    assert f"user {user}, password {password}" in log  # printed once, when generated
    url = f"http://127.0.0.1:{port}/workers"
    assert requests.get(url, auth=(user, password), timeout=10).status_code == 200
    assert requests.get(url, auth=(user, "wrong"), timeout=10).status_code == 401
    # `ps` shows no password: it reaches Flower through the environment.
    assert password.encode() not in Path(f"/proc/{proc.pid}/cmdline").read_bytes()
    proc.stop()
    _, log = start()
    assert password not in log and str(path) in log  # the next start reuses it, quietly


@pytest.fixture(scope="module")
def cert(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    if shutil.which("openssl") is None:
        pytest.skip("openssl is needed to make a test certificate")
    d = tmp_path_factory.mktemp("tls")
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1",
         "-keyout", str(d / "key.pem"), "-out", str(d / "cert.pem")],
        check=True,
        capture_output=True,
        timeout=60,
    )  # fmt: skip
    return d / "cert.pem", d / "key.pem"


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory, cert: tuple[Path, Path]) -> Iterator[Running]:
    yield from run_servers(
        tmp_path_factory, grpc_token=TOKEN, grpc_tls_cert=cert[0], grpc_tls_key=cert[1]
    )


def _tls_channel(running: Running, cert: Path) -> grpc.Channel:
    creds = grpc.ssl_channel_credentials(root_certificates=cert.read_bytes())
    return grpc.secure_channel(running.grpc_target, creds)


@pytest.mark.parametrize(
    ("metadata", "code"),
    [
        (None, grpc.StatusCode.UNAUTHENTICATED),
        (WRONG, grpc.StatusCode.UNAUTHENTICATED),
        (RIGHT, grpc.StatusCode.OK),
    ],
    ids=["none", "wrong", "right"],
)
def test_the_training_service_checks_the_shared_token(
    secured: Running, cert: tuple[Path, Path], metadata: tuple | None, code: grpc.StatusCode
) -> None:
    before = secured.counters()
    with _tls_channel(secured, cert[0]) as ch:
        stub = hexz_pb2_grpc.TrainingServiceStub(ch)
        calls = [
            lambda: stub.FetchModel(hexz_pb2.FetchModelRequest(), timeout=30, metadata=metadata),
            lambda: list(
                stub.ControlEvents(hexz_pb2.ControlRequest(), timeout=1, metadata=metadata)
            ),
        ]
        for call in calls:
            try:
                call()
                got = grpc.StatusCode.OK
            except grpc.RpcError as e:
                got = e.code()
                if got == grpc.StatusCode.DEADLINE_EXCEEDED:  # the stream was open
                    got = grpc.StatusCode.OK
            assert got == code
    assert secured.counters() == before


def test_the_cpu_player_needs_no_token_and_plain_text_is_refused(
    secured: Running, cert: tuple[Path, Path]
) -> None:
    board, player = midgame_board(seed=95, moves=4)
    req = suggest_request(board, player, move_number=4, iterations=10)
    with _tls_channel(secured, cert[0]) as ch:
        resp = hexz_pb2_grpc.CPUPlayerServiceStub(ch).SuggestMove(req, timeout=30)
    assert resp.move.player_num == player + 1
    with grpc.insecure_channel(secured.grpc_target) as ch, pytest.raises(grpc.RpcError) as err:
        hexz_pb2_grpc.TrainingServiceStub(ch).FetchModel(
            hexz_pb2.FetchModelRequest(), timeout=10, metadata=RIGHT
        )
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE


@pytest.fixture(scope="module")
def running(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    yield from run_servers(tmp_path_factory)


@pytest.mark.parametrize(
    ("name", "code"),
    [
        ("x" * 300, grpc.StatusCode.NOT_FOUND),
        ("a" * 65, grpc.StatusCode.NOT_FOUND),
        ("..", grpc.StatusCode.INVALID_ARGUMENT),
        ("a/b", grpc.StatusCode.INVALID_ARGUMENT),
        ("flagz\0", grpc.StatusCode.INVALID_ARGUMENT),
        ("-rf", grpc.StatusCode.INVALID_ARGUMENT),
    ],
    ids=["300 chars", "65 chars", "dots", "slash", "nul", "dash"],
)
def test_model_names_are_names(running: Running, name: str, code: grpc.StatusCode) -> None:
    req = hexz_pb2.FetchModelRequest(model_key=hexz_pb2.ModelKey(name=name, checkpoint=0))
    with running.channel() as ch, pytest.raises(grpc.RpcError) as err:
        running.training_stub(ch).FetchModel(req, timeout=30)
    assert err.value.code() == code
    assert str(running.settings.data_dir) not in err.value.details()
    assert len(err.value.details()) < 200


def test_the_model_name_setting_is_a_name() -> None:
    for bad in ("a" * 65, "../x", ".hidden", "with space"):
        with pytest.raises(SettingsError, match="HEXZ_MODEL_NAME"):
            Settings.from_env({"HEXZ_MODEL_NAME": bad})
    assert Settings.from_env({"HEXZ_MODEL_NAME": "flagz-v2.1_b"}).model_name == "flagz-v2.1_b"


def test_grpc_token_and_tls_settings_are_checked() -> None:
    with pytest.raises(SettingsError, match="16 characters"):
        Settings.from_env({"HEXZ_GRPC_TOKEN": "short"})
    with pytest.raises(SettingsError, match="HEXZ_GRPC_TLS_KEY"):
        Settings.from_env({"HEXZ_GRPC_TLS_CERT": "/etc/cert.pem"})
