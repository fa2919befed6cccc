"""The status and examples pages, rendered in headless Chromium (Debian's `chromium`).

The browser is driven over the DevTools protocol (a minimal WebSocket client below,
stdlib only) so that console errors, uncaught exceptions and failed loads (e.g. a 404
stylesheet) are all seen, and the SVG is counted in the live DOM.
"""

from __future__ import annotations

import base64
import json
import os
import re
import socket
import struct
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import requests
from conftest import CHROMIUM, REPO_ROOT, wait_for, wait_for_examples_to_settle
from test_server_support import Running, add, game_examples, run_servers

if CHROMIUM is None:  # one skip line for the whole module, not one per test
    pytest.skip(
        "chromium is not installed (Debian: apt-get install chromium); CI must install it",
        allow_module_level=True,
    )


@pytest.fixture(scope="module")
def running(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    """Servers with examples and one real training run, so every plot and board has data."""
    from hexz_tasks.training_tick import run_training_tick

    for r in run_servers(tmp_path_factory):
        for seed in range(200, 204):
            assert add(r, game_examples(seed)).status == 1
        wait_for_examples_to_settle()
        assert run_training_tick(r.settings, r.redis, r.keys)["trained"]
        for seed in range(204, 206):  # newest examples stay in the Redis stream
            assert add(r, game_examples(seed)).status == 1
        yield r


BAD_CONSOLE = ("error", "warning", "assert")
# Screenshots of the pages, for a person to look at after the run.
SHOTS = REPO_ROOT / "test-output"


class WebSocket:
    """Just enough of RFC 6455 for the DevTools protocol: text frames, client masking."""

    def __init__(self, url: str, timeout: float) -> None:
        u = urlsplit(url)
        self.sock = socket.create_connection((u.hostname, u.port), timeout=timeout)
        key = base64.b64encode(os.urandom(16)).decode()
        self.sock.sendall(
            f"GET {u.path} HTTP/1.1\r\nHost: {u.hostname}:{u.port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
            "Sec-WebSocket-Version: 13\r\n\r\n".encode()
        )
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = self.sock.recv(4096)
            assert chunk, "DevTools closed the connection during the handshake"
            head += chunk
        assert head.startswith(b"HTTP/1.1 101"), head[:200]
        self.buf = head.split(b"\r\n\r\n", 1)[1]

    def send(self, text: str) -> None:
        data = text.encode()
        n = len(data)
        if n < 126:
            header = struct.pack("!BB", 0x81, 0x80 | n)
        elif n < 1 << 16:
            header = struct.pack("!BBH", 0x81, 0x80 | 126, n)
        else:
            header = struct.pack("!BBQ", 0x81, 0x80 | 127, n)
        mask = os.urandom(4)
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(data))
        self.sock.sendall(header + mask + masked)

    def _read(self, n: int) -> bytes:
        while len(self.buf) < n:
            chunk = self.sock.recv(65536)
            assert chunk, "DevTools closed the connection"
            self.buf += chunk
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def recv(self) -> str:
        message = b""
        while True:
            b0, b1 = self._read(2)
            n = b1 & 0x7F
            if n == 126:
                (n,) = struct.unpack("!H", self._read(2))
            elif n == 127:
                (n,) = struct.unpack("!Q", self._read(8))
            payload = self._read(n)
            opcode = b0 & 0x0F
            if opcode == 0x8:
                raise ConnectionError("DevTools closed the WebSocket")
            if opcode in (0x9, 0xA):  # ping/pong: nothing to do for us
                continue
            message += payload
            if b0 & 0x80:
                return message.decode()

    def close(self) -> None:
        self.sock.close()


class Browser:
    """Headless Chromium with a fresh profile; one page target driven over DevTools."""

    def __init__(self, profile: Path, log: Path) -> None:
        self.log = log
        self.proc = subprocess.Popen(
            [
                str(CHROMIUM),
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                f"--user-data-dir={profile}",
                "--remote-debugging-address=127.0.0.1",
                "--remote-debugging-port=0",
                "about:blank",
            ],
            stdout=subprocess.DEVNULL,
            stderr=open(log, "wb"),
            start_new_session=True,
        )
        port_file = profile / "DevToolsActivePort"
        wait_for(lambda: port_file.is_file() and port_file.read_text().strip(), 60, "Chromium")
        port = int(port_file.read_text().split()[0])
        pages = wait_for(
            lambda: [t for t in self._targets(port) if t.get("type") == "page"], 30, "a page"
        )
        self.ws = WebSocket(pages[0]["webSocketDebuggerUrl"], timeout=60)
        self.next_id = 0
        self.events: list[dict[str, Any]] = []
        for method in ("Runtime.enable", "Log.enable", "Page.enable", "Network.enable"):
            self.call(method)

    @staticmethod
    def _targets(port: int) -> list[dict[str, Any]]:
        try:
            return requests.get(f"http://127.0.0.1:{port}/json/list", timeout=5).json()
        except requests.RequestException:
            return []

    def call(self, method: str, **params: Any) -> dict[str, Any]:
        self.next_id += 1
        my_id = self.next_id
        self.ws.send(json.dumps({"id": my_id, "method": method, "params": params}))
        while True:
            msg = json.loads(self.ws.recv())
            if msg.get("id") == my_id:
                assert "error" not in msg, msg
                return msg.get("result", {})
            if "method" in msg:
                self.events.append(msg)

    def wait_event(self, method: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not any(e["method"] == method for e in self.events):
            assert time.monotonic() < deadline, f"no {method} within {timeout} s"
            msg = json.loads(self.ws.recv())
            if "method" in msg:
                self.events.append(msg)

    def load(self, url: str) -> None:
        self.events.clear()
        self.call("Page.navigate", url=url)
        self.wait_event("Page.loadEventFired", 60)
        self.call("Runtime.evaluate", expression="1")  # drain what arrived with the load

    def screenshot(self, path: Path, width: int = 1400) -> bytes:
        """A PNG of the whole page at `width` CSS pixels, saved to `path`."""
        self.call(
            "Emulation.setDeviceMetricsOverride",
            width=width, height=900, deviceScaleFactor=1, mobile=False,
        )  # fmt: skip
        height = self.evaluate("document.documentElement.scrollHeight")
        shot = self.call(
            "Page.captureScreenshot",
            format="png",
            captureBeyondViewport=True,
            clip={"x": 0, "y": 0, "width": width, "height": height, "scale": 1},
        )
        png = base64.b64decode(shot["data"])
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(png)
        return png

    def evaluate(self, expression: str) -> Any:
        res = self.call("Runtime.evaluate", expression=expression, returnByValue=True)
        assert "exceptionDetails" not in res, res
        return res["result"]["value"]

    def problems(self) -> list[str]:
        """Console errors/warnings, uncaught exceptions, failed loads, HTTP errors."""
        out = []
        for e in self.events:
            m, p = e["method"], e.get("params", {})
            if m == "Runtime.exceptionThrown":
                out.append(f"exception: {p['exceptionDetails'].get('text')}")
            elif m == "Runtime.consoleAPICalled" and p.get("type") in (
                "error",
                "warning",
                "assert",
            ):
                out.append(f"console.{p['type']}: {p.get('args')}")
            elif m == "Log.entryAdded" and p["entry"]["level"] in ("error", "warning"):
                out.append(f"log {p['entry']['level']}: {p['entry'].get('text')}")
            elif m == "Network.loadingFailed":
                out.append(f"load failed: {p.get('errorText')}")
            elif m == "Network.responseReceived" and p["response"]["status"] >= 400:
                out.append(f"HTTP {p['response']['status']}: {p['response']['url']}")
        return out

    def close(self) -> None:
        try:
            self.ws.close()
        finally:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Browser]:
    tmp = tmp_path_factory.mktemp("chromium")
    b = Browser(tmp / "profile", tmp / "chromium.log")
    yield b
    b.close()


def write_history(r: Running, now: float, checkpoints: int = 14) -> None:
    """An hour of pipeline history in Redis, as the trainer, self-play and the evaluation
    leave it: a training run every few minutes, examples every minute, arena games of
    each checkpoint against 0, its predecessor and pure MCTS, held-out metrics."""
    from hexz_tasks.arena import store_game

    keys, name = r.keys, r.settings.model_name
    r.redis.delete(keys.training_runs)
    for n in range(1, checkpoints):
        finished = now - 3600 + n * 250
        loss = {"policy": 3.2 - 0.08 * n, "value": 0.9 - 0.02 * n}
        run = {
            "checkpoint": n, "finished": finished, "seconds": 40.0 + n,
            "losses": [{"epoch": 0, "step": 128 * n, **loss, "loss": sum(loss.values())}],
            "examples_total": 8192 * n + (n % 3) * 500, "examples_window": 32768,
            "samples_per_s": 800.0, "host": "trainer-1",
        }  # fmt: skip
        r.redis.rpush(keys.training_runs, json.dumps(run))
    for m in range(int(now // 60) - 59, int(now // 60) + 1):
        r.redis.hset(keys.rates, f"{m}:examples", 2000 + 37 * (m % 11))
        r.redis.hset(keys.rates, f"{m}:games", 30 + m % 7)

    def match(a: str, b: str, wins: int) -> None:
        for i in range(10):
            record = {"match": f"{a}-{b}", "game": i, "a": a, "b": b}
            store_game(r.redis, keys, {**record, "a_points": 1.0 if i < wins else 0.0})

    for n in range(1, checkpoints):
        match(f"{name}:{n}", f"{name}:0", min(10, 4 + n // 2))
        match(f"{name}:{n}", f"{name}:{n - 1}", 6)
        match(f"{name}:{n}", "mcts", min(9, 1 + n // 2))
    for n in range(checkpoints):
        metrics = {"policy_ce": 2.5 + 0.05 * n, "value_mse": 1.0 + 0.01 * n,
                   "value_sign_acc": 0.5 + 0.01 * n}  # fmt: skip
        r.redis.hset(keys.checkpoint_metrics, str(n), json.dumps(metrics))


def test_status_page_reads_well(running: Running, browser: Browser) -> None:
    write_history(running, time.time())
    browser.load(f"{running.http}/")
    assert browser.problems() == []
    assert browser.evaluate("document.title") == "hexz status"
    kinds = browser.evaluate(
        "Array.from(document.querySelectorAll('svg.plot')).map(p => p.dataset.plot)"
    )
    assert kinds == ["ratings", "losses", "examples_per_minute", "examples_per_hour", "heldout"]

    def texts(kind: str) -> list[str]:
        return browser.evaluate(
            f"Array.from(document.querySelectorAll('svg.plot[data-plot={kind}] text'))"
            ".map(t => t.textContent.trim())"
        )

    # Time axes in clock time (HH:MM, UTC), not fractions of an hour.
    for kind in ("examples_per_minute", "examples_per_hour"):
        clock = [t for t in texts(kind) if re.fullmatch(r"\d\d:\d\d", t)]
        assert len(clock) >= 3 and "time (UTC)" in texts(kind), texts(kind)
    # Ratings with their 95% intervals (a band and error bars) and the baseline.
    ratings = "document.querySelector('svg.plot[data-plot=ratings]')"
    assert browser.evaluate(f"{ratings}.querySelectorAll('[id^=FillBetween]').length") == 1
    assert browser.evaluate(f"{ratings}.querySelectorAll('[id^=LineCollection]').length") >= 1
    assert any(t.startswith("mcts (") for t in texts("ratings")), texts("ratings")
    # Every plot is drawn inside the page's width, none clipped or empty.
    widths = browser.evaluate(
        "Array.from(document.querySelectorAll('svg.plot'))"
        ".map(p => p.getBoundingClientRect().width)"
    )
    assert all(300 < w <= 1400 for w in widths), widths
    # Readable tables: no raw JSON anywhere, numbers with thousands separators.
    cells = browser.evaluate("Array.from(document.querySelectorAll('td')).map(c => c.innerText)")
    assert not [c for c in cells if c.lstrip().startswith(("{", "["))]
    assert "106,996" in cells  # checkpoint 13's examples_total
    text = browser.evaluate("document.body.innerText")
    for heading in ("Ratings and held-out metrics", "Training runs", "Checkpoints", "Settings"):
        assert heading in text
    assert "tensorboard --logdir" in text and "selfplay" in text
    # The stylesheet was applied (it loaded).
    assert browser.evaluate("getComputedStyle(document.querySelector('nav')).display") == "block"
    assert (
        browser.evaluate("getComputedStyle(document.querySelector('nav')).backgroundColor")
        == "rgb(34, 34, 51)"
    )
    png = browser.screenshot(SHOTS / "status-page.png")
    assert png.startswith(b"\x89PNG") and len(png) > 50_000


def test_status_page_before_any_data(
    tmp_path_factory: pytest.TempPathFactory, browser: Browser
) -> None:
    """A fresh pipeline: every plot says what it waits for instead of an empty frame."""
    for r in run_servers(tmp_path_factory):
        browser.load(f"{r.http}/")
        assert browser.problems() == []
        text = browser.evaluate("document.body.innerText")
        assert "no training run yet" in text and "None yet" in text
        shown = browser.evaluate(
            "Array.from(document.querySelectorAll('svg.plot text')).map(t => t.textContent)"
        )
        for waiting in (
            "no checkpoint rated yet",
            "no training run yet",
            "needs two training runs",
        ):
            assert waiting in shown
        browser.screenshot(SHOTS / "status-page-empty.png")


def test_examples_page_draws_boards(running: Running, browser: Browser) -> None:
    browser.load(f"{running.http}/examples/latest?n=6")
    assert browser.problems() == []
    assert browser.evaluate("document.querySelectorAll('svg.board').length") == 6
    # Each board has 105 cells, rocks and grass, probability discs and the move played.
    first = "document.querySelector('svg.board')"
    assert browser.evaluate(f"{first}.querySelectorAll('g.cell').length") == 105
    assert browser.evaluate(f"{first}.querySelectorAll('g.rock').length") > 0
    assert browser.evaluate(f"{first}.querySelectorAll('circle.prob').length") > 0
    played = browser.evaluate(
        "Array.from(document.querySelectorAll('svg.board polygon'))"
        ".filter(p => p.getAttribute('stroke') === '#ff9900').length"
    )
    assert played == 6
    browser.screenshot(SHOTS / "examples-page.png")
    # Newest first, on the page and in the JSON.
    newest = requests.get(f"{running.http}/examples/latest.json?n=6", timeout=10).json()
    times = [e["unix_micros"] for e in newest]
    assert times == sorted(times, reverse=True)


def test_pages_are_served_as_html(running: Running) -> None:
    for path in ("/", "/examples/latest"):
        r = requests.get(f"{running.http}{path}", timeout=30)
        assert r.status_code == 200
        assert r.headers["Content-Type"].startswith("text/html")
        assert "<svg" in r.text


def test_the_problem_check_sees_errors(running: Running, browser: Browser) -> None:
    """The checks above would fail on a broken page: a 404 and a console error are caught."""
    browser.load(f"{running.http}/no/such/page")
    browser.evaluate("console.error('deliberate'), 1")
    browser.evaluate("1")  # the console event may trail the first evaluation's reply
    problems = browser.problems()
    assert any(p.startswith("HTTP 404") for p in problems), problems
    assert any("deliberate" in p for p in problems), problems


def test_status_page_shows_selfplay_progress_before_any_game_finished(running: Running) -> None:
    entry = {
        "host": "sp-host", "pid": 4242, "state": "playing", "games_in_flight": 16,
        "games_started": 16, "games_finished": 0, "games_stored": 0, "examples_stored": 0,
        "unstored": 0, "unstored_examples": 0, "moves": 321, "moves_per_s": 2.5,
        "evaluations": 30000, "batches": 1875, "batch_rows": 30000, "occupancy": 1.0,
        "checkpoint": 0, "started": time.time() - 120, "updated": time.time(),
    }  # fmt: skip
    running.redis.hset(running.keys.selfplay_progress, "p-1", json.dumps(entry))
    try:
        data = requests.get(f"{running.http}/status.json", timeout=30).json()
        selfplay = data["pipeline"]["selfplay"]
        assert selfplay["games_in_flight"] == 16 and selfplay["moves_per_s"] == 2.5
        assert selfplay["checkpoints_behind"] == data["latest_model"]["checkpoint"] >= 1
        page = requests.get(f"{running.http}/", timeout=30).text
        assert "16 games in flight, 2.5 moves/s" in page
        assert "<td>sp-host:4242</td><td>playing</td><td>16</td><td>321</td>" in page
    finally:
        running.redis.hdel(running.keys.selfplay_progress, "p-1")
