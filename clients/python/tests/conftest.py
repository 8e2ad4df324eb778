"""Fixtures that start real processes: the `shiftkey sim` emulator and a `shiftkey broker`.

The binary is $SHIFTKEY_BIN, else <repo>/target/debug/shiftkey. Waits are generous: the tests
must pass on a slow, loaded machine.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import ssl
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import IO, Any, Callable, Dict, Iterator, List, Optional, Tuple

import pytest

REPO = Path(__file__).resolve().parents[3]
STARTUP = 30.0
# crates/shiftkey/tests/common/mod.rs: a 32-byte store key (bytes 0..31, base64).
KEY = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8="
# The label printer's broker secret, as in crates/shiftkey/tests/broker.rs (at least 32 bytes).
PRINTER_SECRET = "printer-secret-1-abcdefghijklmnopqrstuvwxyz"
# The emulator's OAuth gateway: a bearer-protected operation (POST, a JSON envelope).
API = "/tc/RestServices/Core-2007-01-Session/getTCSessionInfo"
BODY = b'{"header":{},"body":{}}'


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="session")
def shiftkey_bin() -> Path:
    path = Path(os.environ.get("SHIFTKEY_BIN") or REPO / "target" / "debug" / "shiftkey")
    # The binary may be mid-rebuild: give it two minutes to come back.
    deadline = time.monotonic() + 120
    while not os.access(path, os.X_OK):
        if time.monotonic() > deadline:
            pytest.fail(f"no shiftkey binary at {path}: build it, or set SHIFTKEY_BIN")
        time.sleep(2)
    return path


@pytest.fixture
def short_dir() -> Iterator[Path]:
    """A private folder with a short path (a Unix socket path has at most 107 bytes)."""
    d = Path(tempfile.mkdtemp(prefix="sk-"))
    yield d
    shutil.rmtree(d, ignore_errors=True)


class Process:
    """A long-running process with its output in a log file; restartable."""

    def __init__(self, args: List[str], log: Path, env: Optional[Dict[str, str]] = None) -> None:
        self.args = args
        self.log_path = log
        self.env = dict(os.environ)
        for var in ["RUST_LOG", "NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"]:
            self.env.pop(var, None)
        self.env.update(env or {})
        self.proc: Optional[subprocess.Popen[bytes]] = None
        self._log: Optional[IO[bytes]] = None
        self._offset = 0

    def start(self) -> None:
        self._log = open(self.log_path, "ab")
        self._offset = self.log_path.stat().st_size
        self.proc = subprocess.Popen(
            self.args, env=self.env, stdin=subprocess.DEVNULL, stdout=self._log,
            stderr=subprocess.STDOUT,
        )

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_for(self, pattern: str, timeout: float = STARTUP) -> "re.Match[str]":
        """The first match of `pattern` in what this run (since the last start) logged."""
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        while True:
            m = re.search(pattern, self.log()[self._offset:])
            if m:
                return m
            if self.proc.poll() is not None:
                pytest.fail(f"{self.args[1]} exited ({self.proc.returncode}):\n{self.log()}")
            if time.monotonic() > deadline:
                pytest.fail(f"no {pattern!r} in {timeout} s:\n{self.log()}")
            time.sleep(0.05)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self._log is not None:
            self._log.close()
            self._log = None


class Sim:
    def __init__(self, process: Process, url: str) -> None:
        self.process, self.url, self.api = process, url, url + API

    def stats(self) -> Dict[str, Any]:
        with urllib.request.urlopen(self.url + "/sim/stats", timeout=10) as r:
            return json.loads(r.read())  # type: ignore[no-any-return]

    def restart(self) -> None:
        """Kills every token server-side, like a server restart."""
        req = urllib.request.Request(self.url + "/sim/restart", data=b"", method="POST")
        try:
            with urllib.request.urlopen(req, timeout=10) as r:
                assert r.status == 200
        except urllib.error.HTTPError as e:
            if e.code == 404:
                pytest.fail("this shiftkey binary has no POST /sim/restart: rebuild it")
            raise

    def grants(self) -> int:
        return int(self.stats()["grants"].get("client_credentials", 0))

    def rejections(self) -> int:
        """401s the gateway answered."""
        return int(self.stats()["exceptions"].get("invalid_token", 0))


@pytest.fixture
def start_sim(tmp_path: Path, shiftkey_bin: Path) -> Iterator[Callable[..., Sim]]:
    started: List[Process] = []

    def start(access_ttl_secs: int = 3600) -> Sim:
        d = tmp_path / f"sim{len(started)}"
        d.mkdir()
        scenario = d / "scenario.toml"
        scenario.write_text(f"[oauth]\naccess_ttl_secs = {access_ttl_secs}\n")
        p = Process(
            [str(shiftkey_bin), "sim", "--port", "0", "--config", str(scenario)], d / "sim.log"
        )
        started.append(p)
        p.start()
        sim = Sim(p, p.wait_for(r"emulator on (http://127\.0\.0\.1:\d+)").group(1))
        deadline = time.monotonic() + STARTUP
        while True:  # the port accepts and answers
            try:
                sim.stats()
                return sim
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)

    yield start
    for p in started:
        p.stop()


class BrokerProcess:
    """`shiftkey broker` serving one token, `gw` (client credentials against the emulator), on
    a socket and on loopback HTTP for the client `label-printer`."""

    def __init__(self, shiftkey_bin: Path, state: Path, run: Path, sim: Sim) -> None:
        self.socket = run / "run" / "broker.sock"
        self.http_url = f"http://127.0.0.1:{free_port()}"
        self.secret = PRINTER_SECRET
        config = state / "shiftkey.toml"
        config.write_text(
            f'[store]\ndir = "{state}/store"\nkey = {{ env = "SK_KEY" }}\n'
            f'[tokens.gw]\nkind = "client_credentials"\ntoken_url = "{sim.url}/oauth/token"\n'
            'client_id = "shiftkey"\nclient_secret = { env = "GW_SECRET" }\n'
            f'[broker]\nsocket = "{self.socket}"\nhttp = "{self.http_url[len("http://"):]}"\n'
            '[broker.clients.label-printer]\nsecret = { env = "PRINTER_SECRET" }\n'
            'tokens = ["gw"]\n'
            '[ops]\nlisten = ""\n'
        )
        env = {"SK_KEY": KEY, "GW_SECRET": "shiftkey-secret", "PRINTER_SECRET": PRINTER_SECRET}
        self.process = Process(
            [str(shiftkey_bin), "broker", "-c", str(config)], state / "broker.log", env
        )

    def start(self) -> None:
        from shiftkey_client import Broker, BrokerError

        self.process.start()
        self.process.wait_for(r"serving 1 token\(s\)")
        self.process.wait_for(r"broker HTTP on http://")
        deadline = time.monotonic() + STARTUP
        while True:  # the socket answers with a token
            try:
                Broker(self.socket, timeout=10).token("gw")
                return
            except BrokerError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)

    def stop(self) -> None:
        self.process.stop()

    def stats(self) -> Dict[str, Any]:
        """The broker's counters for `gw` (acquires, proactive, reactive, generation)."""
        with socket.socket(socket.AF_UNIX) as s:
            s.settimeout(10)
            s.connect(str(self.socket))
            s.sendall(b'{"op":"stats"}\n')
            reply = json.loads(s.makefile("rb").readline())
        assert reply["ok"], reply
        return reply["tokens"]["gw"]  # type: ignore[no-any-return]


@pytest.fixture
def start_broker(
    tmp_path: Path, shiftkey_bin: Path, short_dir: Path
) -> Iterator[Callable[[Sim], BrokerProcess]]:
    started: List[BrokerProcess] = []

    def start(sim: Sim) -> BrokerProcess:
        state = tmp_path / f"broker{len(started)}"
        run = short_dir / f"b{len(started)}"
        state.mkdir()
        run.mkdir()
        b = BrokerProcess(shiftkey_bin, state, run, sim)
        started.append(b)
        b.start()
        return b

    yield start
    for b in started:
        b.stop()


@pytest.fixture
def stack(
    start_sim: Callable[..., Sim], start_broker: Callable[[Sim], BrokerProcess]
) -> Callable[..., "tuple[Sim, BrokerProcess]"]:
    """An emulator (tokens living `access_ttl_secs`) and a broker serving its token."""

    def start(access_ttl_secs: int = 3600) -> "tuple[Sim, BrokerProcess]":
        sim = start_sim(access_ttl_secs)
        return sim, start_broker(sim)

    return start


class Silent:
    """A listener that accepts connections and never answers."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.held: List[socket.socket] = []
        sock.listen(8)
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.held.append(conn)

    def close(self) -> None:
        for c in self.held:
            c.close()
        self.sock.close()


@pytest.fixture
def silent_unix(short_dir: Path) -> Iterator[Path]:
    path = short_dir / "silent.sock"
    s = socket.socket(socket.AF_UNIX)
    s.bind(str(path))
    silent = Silent(s)
    yield path
    silent.close()


@pytest.fixture
def silent_tcp() -> Iterator[str]:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    silent = Silent(s)
    yield f"http://127.0.0.1:{s.getsockname()[1]}"
    silent.close()


class FakeApi:
    """An API at `url` that accepts only the bearer token `accept` (none: every request gets
    401), and records what each request presented: (Authorization, body). `/redirect` sends a
    request on to the API on another host name (localhost)."""

    def __init__(self) -> None:
        self.accept: Optional[str] = None
        self.seen: List[Tuple[str, bytes]] = []
        api = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                body = b""
                if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                    while True:
                        size = int(self.rfile.readline().split(b";")[0], 16)
                        body += self.rfile.read(size + 2)[:size]
                        if size == 0:
                            break
                else:
                    body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                if self.path == "/redirect":  # to the same API, on another host name
                    self.send_response(307)
                    self.send_header("Location", api.url.replace("127.0.0.1", "localhost"))
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                presented = self.headers.get("Authorization", "")
                api.seen.append((presented, body))
                ok = api.accept is not None and presented == f"Bearer {api.accept}"
                self.send_response(200 if ok else 401)
                if not ok:
                    self.send_header("WWW-Authenticate", 'Bearer error="invalid_token"')
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/api"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def fake_api() -> Iterator[FakeApi]:
    api = FakeApi()
    yield api
    api.close()


class FakeBrokerServer:
    """A broker's HTTP(S) listener in Python (`tls`: an `ssl` server context for https), for
    what the real one cannot be made to do: it counts the calls, hands out `t1` (generation 1,
    `expires_in`), and each report of the current generation gives the next (`t2`, ...). Only
    `gw` exists; the secret is PRINTER_SECRET. `canned` = (status, content type, body) answers
    every request instead."""

    def __init__(self, tls: Optional[ssl.SSLContext] = None) -> None:
        self.generation = 1
        self.expires_in = 3600
        self.gets = 0
        self.reports: List[Tuple[int, bool]] = []
        self.canned: Optional[Tuple[int, str, bytes]] = None
        self.delay = 0.0
        self.lock = threading.Lock()
        broker = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def answer(self, status: int, body: Any, content_type: str = "application/json"
                       ) -> None:
                data = body if isinstance(body, bytes) else json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def handle_one(self, rejected: bool) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                if broker.delay:
                    time.sleep(broker.delay)
                if broker.canned is not None:
                    status, content_type, data = broker.canned
                    return self.answer(status, data, content_type)
                if self.headers.get("Authorization") != f"Bearer {PRINTER_SECRET}":
                    return self.answer(
                        401, {"ok": False, "error": "a configured client secret is required"}
                    )
                m = re.fullmatch(r"/v1/tokens/([^/]+)(/rejected)?", self.path)
                if m is None or bool(m.group(2)) != rejected:
                    return self.answer(404, b"not found\n", "text/plain")
                if m.group(1) != "gw":
                    error = f"no token named `{m.group(1)}`"
                    return self.answer(404, {"ok": False, "error": error})
                with broker.lock:
                    if rejected:
                        report = json.loads(body)
                        broker.reports.append((report["generation"], report["served"]))
                        if report["generation"] == broker.generation:
                            broker.generation += 1
                    else:
                        broker.gets += 1
                    g = broker.generation
                reply = {"ok": True, "token": f"t{g}", "generation": g}
                self.answer(200, {**reply, "expires_in": broker.expires_in})

            def do_GET(self) -> None:
                self.handle_one(rejected=False)

            def do_POST(self) -> None:
                self.handle_one(rejected=True)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        if tls is not None:
            self.server.socket = tls.wrap_socket(self.server.socket, server_side=True)
        scheme = "https" if tls is not None else "http"
        self.url = f"{scheme}://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def fake_broker() -> Iterator[FakeBrokerServer]:
    b = FakeBrokerServer()
    yield b
    b.close()
