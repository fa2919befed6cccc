"""A self-play worker on "another host": its own network namespace, reaching Redis only by URL.

The worker runs in a network namespace of its own (``ip netns``), joined to this host
by a veth pair with link-local addresses (169.254.x.y/30, both ends ours). Redis listens
on the host end of that link. The test cuts the link for a while and restores it: the
worker must recover, and the store must hold every game exactly once.

Needs root and iproute2; skipped with the reason otherwise.
"""

from __future__ import annotations

import os
import random
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis
from conftest import TEST_PREFIX, Procs, RedisServer, free_port, tiny_env, wait_for

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
# How long the link stays cut: longer than the clients' connection health checks (15 s
# for the store's client, 25 s for the broker's) and than TCP's first retransmissions.
OUTAGE_S = 30.0
SLICES_BEFORE_CUT = 3

pytestmark = pytest.mark.slow


def ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30, check=check)


def netns_unavailable() -> str | None:
    """Why this test cannot run here, or None."""
    if os.geteuid() != 0:
        return "needs root for `ip netns` and veth links"
    if shutil.which("ip") is None:
        return "needs iproute2 (`ip`)"
    probe = f"hexz-probe-{uuid.uuid4().hex[:8]}"
    try:
        added = ip("netns", "add", probe, check=False)
    except (OSError, subprocess.SubprocessError) as e:
        return f"`ip netns add` failed: {e}"
    if added.returncode != 0:
        return f"`ip netns add` is not permitted here: {added.stderr.strip()}"
    ip("netns", "del", probe, check=False)
    return None


@dataclass
class Link:
    """A network namespace joined to this host by a veth pair."""

    netns: str
    host_if: str
    ns_if: str
    host_ip: str
    ns_ip: str

    def exec_args(self, *args: str) -> list[str]:
        """A command line that runs `args` inside the namespace."""
        return ["ip", "netns", "exec", self.netns, *args]

    def run(
        self, *args: str, env: dict[str, str] | None = None, timeout: float = 60
    ) -> subprocess.CompletedProcess:
        """Runs `args` in the namespace; on timeout kills its whole process group (rc -9)."""
        with subprocess.Popen(
            self.exec_args(*args),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
            cwd=ROOT,
            start_new_session=True,
        ) as p:
            try:
                out, err = p.communicate(timeout=timeout)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                out, err = p.communicate()
                return subprocess.CompletedProcess(p.args, -signal.SIGKILL, out, err)
            return subprocess.CompletedProcess(p.args, p.returncode, out, err)

    def cut(self) -> None:
        ip("link", "set", self.host_if, "down")

    def restore(self) -> None:
        ip("link", "set", self.host_if, "up")


def _free_link_subnet() -> tuple[str, str]:
    """A /30 in 169.254.0.0/16 that no interface of this host uses yet."""
    used = ip("-o", "-4", "addr", "show").stdout
    for _ in range(100):
        third, fourth = random.randrange(1, 254), 4 * random.randrange(0, 63)
        if third == 169:  # 169.254.169.254 is the cloud metadata address; stay clear
            continue
        host, ns = f"169.254.{third}.{fourth + 1}", f"169.254.{third}.{fourth + 2}"
        if f"169.254.{third}.{fourth}" not in used and host not in used and ns not in used:
            return host, ns
    raise RuntimeError("no free 169.254.x.y/30 found")


def _kill_namespace_processes(netns: str) -> None:
    """Ends what is still running inside our namespace (only our own test processes)."""
    pids = ip("netns", "pids", netns, check=False).stdout.split()
    for pid in pids:
        try:
            os.kill(int(pid), signal.SIGKILL)
        except (ProcessLookupError, ValueError):
            pass


@pytest.fixture(scope="module")
def link() -> Iterator[Link]:
    reason = netns_unavailable()
    if reason:
        pytest.skip(reason)
    tag = uuid.uuid4().hex[:8]
    # Interface names have at most 15 characters.
    link = Link(f"hexz-mh-{tag}", f"hxh{tag}", f"hxn{tag}", *_free_link_subnet())
    created: list[list[str]] = []
    try:
        ip("netns", "add", link.netns)
        created.append(["netns", "del", link.netns])
        ip("link", "add", link.host_if, "type", "veth", "peer", "name", link.ns_if)
        created.append(["link", "del", link.host_if])  # deletes both ends
        ip("link", "set", link.ns_if, "netns", link.netns)
        ip("addr", "add", f"{link.host_ip}/30", "dev", link.host_if)
        ip("link", "set", link.host_if, "up")
        ip("-n", link.netns, "addr", "add", f"{link.ns_ip}/30", "dev", link.ns_if)
        ip("-n", link.netns, "link", "set", link.ns_if, "up")
        ip("-n", link.netns, "link", "set", "lo", "up")
        yield link
    finally:
        _kill_namespace_processes(link.netns)
        for args in reversed(created):
            ip(*args, check=False)


class LinkRedis(RedisServer):
    """The project's redis-server configuration, with a password, listening on the link too."""

    def __init__(self, data_dir: Path, link: Link) -> None:
        super().__init__(data_dir, password=secrets.token_hex(16))
        self.link = link

    @property
    def link_url(self) -> str:
        """The URL a worker on the other side of the link uses."""
        return f"redis://:{self.password}@{self.link.host_ip}:{self.port}/0"

    def start(self) -> None:
        from hexz_tasks.redis_server import server_command

        cmd = server_command(self.port, self.data_dir, password=self.password)
        cmd[cmd.index("--bind") + 1] = f"127.0.0.1 {self.link.host_ip}"
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL)
        probe = redis.Redis(port=self.port, password=self.password, socket_connect_timeout=0.5)

        def up() -> bool:
            try:
                return bool(probe.ping())
            except redis.ConnectionError:
                assert self.proc is not None and self.proc.poll() is None, "redis-server died"
                return False

        wait_for(up, 20, f"redis-server on port {self.port}")


@pytest.fixture(scope="module")
def link_redis(link: Link, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LinkRedis]:
    server = LinkRedis(tmp_path_factory.mktemp("redis"), link)
    server.start()
    yield server
    server.stop()


def ping_script(url: str) -> list[str]:
    code = (
        "import redis, sys\n"
        f"r = redis.Redis.from_url({url!r}, socket_connect_timeout=3, socket_timeout=3)\n"
        "try:\n    print(r.ping())\n"
        "except redis.RedisError as e:\n    print(repr(e))\n    sys.exit(1)\n"
    )
    return [PYTHON, "-c", code]


def test_namespace_reaches_redis_only_across_the_link(link: Link, link_redis: LinkRedis) -> None:
    # Across the link, with the password: yes.
    across = link.run(*ping_script(link_redis.link_url))
    assert across.returncode == 0 and "True" in across.stdout, across.stdout + across.stderr
    # The namespace has its own network stack: the host's loopback is not reachable.
    loopback = link.run(
        *ping_script(f"redis://:{link_redis.password}@127.0.0.1:{link_redis.port}/0")
    )
    assert loopback.returncode == 1, loopback.stdout
    # Without the password Redis refuses.
    anonymous = link.run(*ping_script(f"redis://{link.host_ip}:{link_redis.port}/0"))
    assert anonymous.returncode == 1 and "Authentication" in anonymous.stdout, anonymous.stdout
    # Cut: unreachable; restored: reachable again.
    link.cut()
    try:
        cut = link.run(*ping_script(link_redis.link_url))
        assert cut.returncode == 1, cut.stdout
    finally:
        link.restore()
    wait_for(lambda: link.run(*ping_script(link_redis.link_url)).returncode == 0, 30, "link back")


# --- TLS across the link, as docker/README.md sets it up -----------------------------------


def make_certificates(directory: Path, server_ip: str) -> None:
    """A throwaway CA, a server certificate for `server_ip` signed by it, and a foreign CA."""

    def openssl(*args: str) -> None:
        subprocess.run(
            ["openssl", *args], cwd=directory, capture_output=True, check=True, timeout=60
        )

    for ca in ("ca", "other-ca"):
        openssl(
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-keyout",
            f"{ca}.key",
            "-out",
            f"{ca}.crt",
            "-subj",
            f"/CN=hexz test {ca}",
        )
    openssl(
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "redis.key",
        "-out",
        "redis.csr",
        "-subj",
        f"/CN={server_ip}",
    )
    (directory / "san.cnf").write_text(f"subjectAltName=IP:{server_ip}\n")
    openssl("x509", "-req", "-in", "redis.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
            "-CAcreateserial", "-days", "1", "-extfile", "san.cnf",
            "-out", "redis.crt")  # fmt: skip


CLIENTS_PING = """
from hexz_tasks.celery import app, redis_client
for name, ping in [
    ("store", lambda: redis_client().ping()),
    ("broker", lambda: app.connection_for_write().ensure_connection(max_retries=1)
        .default_channel.client.ping()),
    ("backend", lambda: app.backend.client.ping()),
]:
    try:
        print(name, ping())
    except Exception as e:
        print(name, "failed:", type(e).__name__, e)
"""


def test_tls_redis_url_across_the_link(link: Link, tmp_path: Path) -> None:
    """The rediss:// URL of docker/README.md: broker, result backend and store all verify."""
    if shutil.which("openssl") is None:
        pytest.skip("needs the openssl command to make certificates")
    make_certificates(tmp_path, link.host_ip)
    password = secrets.token_hex(16)
    port = free_port()
    server = subprocess.Popen(
        ["redis-server", "--port", "0", "--tls-port", str(port), "--bind", link.host_ip,
         "--tls-cert-file", "redis.crt", "--tls-key-file", "redis.key",
         "--tls-ca-cert-file", "ca.crt", "--tls-auth-clients", "no",
         "--requirepass", password, "--save", "", "--dir", str(tmp_path)],
        cwd=tmp_path, stdout=subprocess.DEVNULL,
    )  # fmt: skip
    try:

        def clients(ca: str) -> str:
            url = (
                f"rediss://:{password}@{link.host_ip}:{port}/0"
                f"?ssl_cert_reqs=required&ssl_ca_certs={tmp_path / ca}"
            )
            env = tiny_env(url, tmp_path / "data")
            env["PYTHONPATH"] = str(ROOT)
            result = link.run(PYTHON, "-c", CLIENTS_PING, env=env, timeout=120)
            assert result.returncode == 0, result.stderr[-3000:]
            return result.stdout

        def trusted() -> str | None:
            out = clients("ca.crt")
            return out if "store True" in out else None

        out = wait_for(trusted, 30, "Redis with TLS")
        assert "broker True" in out and "backend True" in out, out
        # A server whose certificate the CA did not sign is refused by all three.
        foreign = clients("other-ca.crt")
        for name in ("store", "broker", "backend"):
            assert re.search(rf"{name} failed:.*CERTIFICATE_VERIFY_FAILED", foreign), foreign
    finally:
        server.terminate()
        server.wait(10)


# --- the self-play worker across the link ------------------------------------------------


def dockerfile_healthcheck() -> str:
    """The CPU worker image's health check command (docker/Dockerfile), to run as is."""
    text = (ROOT / "docker" / "Dockerfile").read_text()
    match = re.search(r'HEALTHCHECK .*?CMD \["sh", "-c", "(.*?)"\]\n', text, re.S)
    assert match, "no worker HEALTHCHECK in docker/Dockerfile"
    return match.group(1).replace('\\"', '"')


def stored_games(r: redis.Redis) -> list[tuple[str, int]]:
    """(game id, examples) of every stream entry, in stream order; blobs decoded to count."""
    from hexz_tasks import codec
    from hexz_tasks.keys import Keys

    out = []
    for _, fields in r.xrange(Keys(TEST_PREFIX).examples_stream):
        rows = codec.num_rows(codec.from_blob(fields[b"d"]))
        assert rows == int(fields[b"n"]), "an entry's blob disagrees with its count"
        out.append((fields[b"id"].decode(), rows))
    return out


def test_worker_across_a_cut_link_recovers_and_stores_every_game_once(
    link: Link, link_redis: LinkRedis, procs: Procs, tmp_path: Path
) -> None:
    from celery import Celery

    from hexz_tasks.celery import SELFPLAY_QUEUE, SELFPLAY_TASK, celery_config
    from hexz_tasks.keys import Keys
    from hexz_tasks.repository import ModelRepository
    from hexz_tasks.settings import Settings
    from hexz_tasks.store import ExampleStore
    from hexz_tasks.training_tick import restore_trainer_state

    keys = Keys(TEST_PREFIX)
    r = link_redis.client()
    store = ExampleStore(r, keys)

    # The trainer's side (this host): checkpoint 0, published in Redis. The worker gets
    # nothing else: no shared disk, only the URL.
    host_env = tiny_env(link_redis.url, tmp_path / "trainer")
    host_settings = Settings.from_env({k: v for k, v in host_env.items() if k.startswith("HEXZ_")})
    restore_trainer_state(
        host_settings,
        r,
        keys,
        ModelRepository(host_settings.repo_base_dir, host_settings.model_name),
    )

    worker_env = tiny_env(link_redis.link_url, tmp_path / "worker-host")
    worker_env["PYTHONPATH"] = str(ROOT)
    worker_env["HOSTNAME"] = socket.gethostname()  # what Docker sets; %h in the node name
    worker = procs.start(
        "netns-worker",
        link.exec_args(
            PYTHON, "-m", "celery", "-A", "hexz_tasks", "worker", "-Q", SELFPLAY_QUEUE,
            "-P", "prefork", "-c", "1", "-E", "-l", "INFO",
        ),
        worker_env,
    )  # fmt: skip
    healthcheck = dockerfile_healthcheck()

    def healthy() -> bool:
        assert worker.alive(), "the worker exited:\n" + worker.log()[-4000:]
        return link.run("sh", "-c", healthcheck, env=worker_env, timeout=30).returncode == 0

    wait_for(healthy, 120, "the worker's health check (celery inspect ping)", interval=2)
    node = f"celery@{socket.gethostname()}"
    wait_for(lambda: r.hexists(keys.workers, node), 30, "the worker in the registry")

    app = Celery("hexz_tasks_test")
    app.conf.update(celery_config(host_settings))
    budget = host_settings.selfplay_slice_s
    for _ in range(SLICES_BEFORE_CUT):
        app.send_task(SELFPLAY_TASK, args=[budget, 0])
    # Cut while the worker is busy: some games stored, more to come.
    wait_for(lambda: store.counters()["games"] >= 1, 180, "the first game from the worker", 0.2)
    link.cut()
    cut_at = time.monotonic()
    try:
        time.sleep(2)  # a write already on its way may still land
        games_at_cut = store.counters()["games"]
        # What Docker would see: the worker's health check fails (or times out).
        assert link.run("sh", "-c", healthcheck, env=worker_env, timeout=20).returncode != 0
        time.sleep(max(0.0, OUTAGE_S - (time.monotonic() - cut_at)))
        # Nothing crossed the cut link.
        assert store.counters()["games"] == games_at_cut
    finally:
        link.restore()

    wait_for(healthy, 120, "the worker healthy again", interval=2)
    # A slice sent after the outage runs too and stores new games; the slice cut off by
    # the outage comes back after the visibility timeout and plays on.
    app.send_task(SELFPLAY_TASK, args=[budget, 0])

    def all_done() -> bool:
        return (
            store.counters()["games"] > games_at_cut
            and r.llen(keys.queue(SELFPLAY_QUEUE)) == 0
            and r.hlen(keys.unacked) == 0
            and r.hlen(keys.selfplay_running) == 0
        )

    wait_for(all_done, 300, "games after the outage and an idle worker", interval=1)
    games = stored_games(r)
    ids = [game_id for game_id, _ in games]
    # Every finished game once: none doubled (each has an id of its own).
    assert len(ids) == len(set(ids)), f"games stored twice: {sorted(ids)}"
    counters = store.counters()
    assert counters["games"] == len(ids) > games_at_cut
    assert counters["examples"] == sum(n for _, n in games) == counters["pending"]
    assert all(n > 0 for _, n in games)
    assert worker.alive()
