"""What needs no running broker: URL checks, socket path resolution, secrets kept out of text,
a broker that is down or never answers, a socket served by another user."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

import shiftkey_client
from shiftkey_client import Broker, BrokerError, Token

SECRET = "s3cret-s3cret-s3cret-s3cret-s3cret-42"


@pytest.mark.parametrize(
    "url",
    [
        "http://10.1.2.3:8732",
        "http://192.168.0.5:8732",
        "http://0.0.0.0:8732",
        "http://broker.example:8732",
        "http://[2001:db8::1]:8732",
        "http://127.0.0.1.nip.io:8732",
        "ftp://127.0.0.1:8732",
        "127.0.0.1:8732",
        "https://user:pw@broker.example:8733",
        "http://user:pw@127.0.0.1:8732",
        "http://127.0.0.1:8732/v1/tokens/gw",
    ],
)
def test_a_non_loopback_or_odd_url_is_refused_at_construction(url: str) -> None:
    with pytest.raises(ValueError) as e:
        Broker(url=url, secret=SECRET)
    assert SECRET not in str(e.value)


@pytest.mark.parametrize(
    ("url", "normal"),
    [
        ("http://127.0.0.1:8732", "http://127.0.0.1:8732"),
        ("http://127.8.9.10:1/", "http://127.8.9.10:1"),
        ("http://[::1]:8732", "http://[::1]:8732"),
        ("http://localhost:8732", "http://localhost:8732"),
    ],
)
def test_loopback_urls_are_accepted(url: str, normal: str) -> None:
    b = Broker(url=url, secret=SECRET)
    assert b.url == normal
    assert SECRET not in repr(b)


def test_the_http_listener_needs_a_secret_and_one_target() -> None:
    with pytest.raises(ValueError):
        Broker(url="http://127.0.0.1:8732")
    with pytest.raises(ValueError):
        Broker("/run/x.sock", url="http://127.0.0.1:8732", secret=SECRET)
    with pytest.raises(ValueError):
        Broker("/run/x.sock", secret=SECRET)


def test_socket_path_explicit_then_env_then_xdg_never_tmp(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SHIFTKEY_BROKER_SOCKET", "/env/broker.sock")
    monkeypatch.setenv("XDG_RUNTIME_DIR", "/run/user/1000")
    assert Broker("/explicit.sock").socket_path == "/explicit.sock"
    assert Broker(Path("/explicit.sock")).socket_path == "/explicit.sock"
    assert Broker().socket_path == "/env/broker.sock"
    monkeypatch.delenv("SHIFTKEY_BROKER_SOCKET")
    assert Broker().socket_path == "/run/user/1000/shiftkey/broker.sock"
    monkeypatch.delenv("XDG_RUNTIME_DIR")
    with pytest.raises(BrokerError, match="SHIFTKEY_BROKER_SOCKET"):
        Broker()


def test_from_env_prefers_http_and_wants_its_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SHIFTKEY_BROKER_SOCKET", "/env/broker.sock")
    assert Broker.from_env().socket_path == "/env/broker.sock"
    monkeypatch.setenv("SHIFTKEY_BROKER_URL", "http://127.0.0.1:8732")
    with pytest.raises(BrokerError, match="SHIFTKEY_BROKER_SECRET"):
        Broker.from_env()
    monkeypatch.setenv("SHIFTKEY_BROKER_SECRET", SECRET)
    b = Broker.from_env(timeout=3)
    assert (b.url, b.socket_path, b.timeout) == ("http://127.0.0.1:8732", None, 3.0)
    assert SECRET not in repr(b)
    monkeypatch.setenv("SHIFTKEY_BROKER_URL", "http://10.0.0.1:8732")
    with pytest.raises(ValueError, match="not loopback"):
        Broker.from_env()


def test_a_token_repr_hides_its_value() -> None:
    t = Token("at_very_secret_value", 3, 1790)
    assert "at_very_secret_value" not in repr(t) and "at_very_secret_value" not in str(t)
    assert "generation=3" in repr(t)
    with pytest.raises(AttributeError):
        t.generation = 4  # type: ignore[misc]


def test_import_does_not_need_requests_or_httpx() -> None:
    code = (
        "import sys; sys.modules['requests'] = None; sys.modules['httpx'] = None\n"
        "import shiftkey_client\n"
        "from shiftkey_client import Broker, BrokerError, Token, token, BrokerAuth\n"
        "print('ok')"
    )
    src = str(Path(__file__).resolve().parents[1] / "src")  # not a copy installed elsewhere
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env={"PYTHONPATH": src}
    )
    assert out.stdout.strip() == "ok", out.stderr


def test_no_broker_on_the_socket(short_dir: Path) -> None:
    missing = short_dir / "nobody.sock"
    with pytest.raises(BrokerError) as e:
        Broker(missing, timeout=1.0).token("gw")
    assert str(e.value) == f"no shiftkey broker is listening on {missing}"
    # A stale socket file (its broker died): refused, same message.
    import socket

    stale = short_dir / "stale.sock"
    s = socket.socket(socket.AF_UNIX)
    s.bind(str(stale))
    s.close()
    with pytest.raises(BrokerError, match="no shiftkey broker is listening on"):
        Broker(stale, timeout=1.0).token("gw")


def test_no_broker_on_the_port() -> None:
    from conftest import free_port

    url = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(BrokerError) as e:
        Broker(url=url, secret=SECRET, timeout=1.0).token("gw")
    assert str(e.value) == f"no shiftkey broker is listening on {url}"
    assert SECRET not in repr(e.value)


def test_a_socket_broker_that_never_answers_times_out(silent_unix: Path) -> None:
    start = time.monotonic()
    with pytest.raises(BrokerError) as e:
        Broker(silent_unix, timeout=1.0).rejected("gw", 3)
    elapsed = time.monotonic() - start
    assert str(e.value) == f"the shiftkey broker on {silent_unix} did not answer within 1 s"
    assert 0.9 <= elapsed < 5, elapsed


def test_an_http_broker_that_never_answers_times_out(silent_tcp: str) -> None:
    start = time.monotonic()
    with pytest.raises(BrokerError) as e:
        Broker(url=silent_tcp, secret=SECRET, timeout=1.0).token("gw")
    elapsed = time.monotonic() - start
    assert str(e.value) == f"the shiftkey broker on {silent_tcp} did not answer within 1 s"
    assert SECRET not in repr(e.value)
    assert 0.9 <= elapsed < 5, elapsed


def test_a_socket_of_another_uid_is_not_trusted(
    silent_unix: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(shiftkey_client.broker, "_peer_uid", lambda s: os.getuid() + 1)
    start = time.monotonic()
    with pytest.raises(BrokerError, match=r"served by uid \d+, not by this user.*not trusted"):
        Broker(silent_unix, timeout=10.0).token("gw")
    assert time.monotonic() - start < 5, "refused at once, not after waiting for an answer"


def test_a_socket_whose_owner_cannot_be_told_is_not_trusted(
    silent_unix: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(shiftkey_client.broker, "_peer_uid", lambda s: None)
    with pytest.raises(BrokerError, match="cannot tell who serves .*not trusted"):
        Broker(silent_unix, timeout=10.0).token("gw")


@pytest.mark.skipif(os.getuid() != 0, reason="needs root to serve a socket as another user")
def test_a_socket_really_served_by_nobody_is_not_trusted(short_dir: Path) -> None:
    path = short_dir / "foreign.sock"
    # Bound as root, listening as nobody: the peer credentials are the listener's.
    script = (
        "import os, socket, sys, time\n"
        "s = socket.socket(socket.AF_UNIX); s.bind(sys.argv[1])\n"
        "os.setgroups([]); os.setgid(65534); os.setuid(65534)\n"
        "s.listen(); print('ready', flush=True)\n"
        "c, _ = s.accept(); c.settimeout(5)\n"
        "try:\n    got = c.recv(100)\nexcept OSError:\n    got = b''\n"
        "print('got', got, flush=True); time.sleep(1)\n"
    )
    child = subprocess.Popen(
        [sys.executable, "-c", script, str(path)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert child.stdout is not None
        assert child.stdout.readline().strip() == "ready"
        with pytest.raises(BrokerError, match="served by uid 65534.*not trusted"):
            Broker(path, timeout=10.0).token("gw")
        # The request was never sent to the impostor.
        assert child.stdout.readline().strip() == "got b''"
    finally:
        child.kill()
        child.wait()
