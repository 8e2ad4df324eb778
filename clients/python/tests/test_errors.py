"""The error classes: which answer of the broker is which (the real broker where it can be made to
give the answer, a fake listener for the rest), with `status` and `message`, and the adapters'
classes that are also `requests` / `httpx` errors."""

from __future__ import annotations

import asyncio
import pickle
from pathlib import Path
from typing import Any, Callable, Tuple, Type

import httpx
import pytest
import requests

import shiftkey_client
from conftest import BODY, PRINTER_SECRET, BrokerProcess, FakeApi, FakeBrokerServer, Sim
from shiftkey_client import (
    AsyncBroker,
    Broker,
    BrokerAuth,
    BrokerError,
    BrokerUnavailable,
    Forbidden,
    Token,
    TokenRefused,
)

Stack = Callable[..., Tuple[Sim, BrokerProcess]]
WRONG = "printer-secret-2-abcdefghijklmnopqrstuvwxyz"


def ask(kind: str, broker_kwargs: Any, name: str = "gw", rejected: bool = False) -> Token:
    """`token` (or `rejected`) of `name` through Broker ("sync") or AsyncBroker ("async")."""
    if kind == "sync":
        b = Broker(**broker_kwargs)
        return b.rejected(name, 1) if rejected else b.token(name)
    a = AsyncBroker(**broker_kwargs)
    return asyncio.run(a.rejected(name, 1) if rejected else a.token(name))


KINDS = ["sync", "async"]


def test_the_hierarchy() -> None:
    for cls in (BrokerUnavailable, TokenRefused, Forbidden):
        assert issubclass(cls, BrokerError)
        e = cls("the text", status=503, message="the broker's own")
        assert (str(e), e.status, e.message) == ("the text", 503, "the broker's own")
        back = pickle.loads(pickle.dumps(e))
        assert type(back) is cls and (str(back), back.status, back.message) == (
            "the text", 503, "the broker's own"
        )
    plain = BrokerError("x")
    assert plain.status is None and plain.message is None


@pytest.mark.parametrize("kind", KINDS)
def test_real_broker_answers_map_to_classes(kind: str, stack: Stack) -> None:
    _sim, broker = stack()
    # The socket: an unknown token.
    with pytest.raises(TokenRefused) as e:
        ask(kind, {"socket_path": broker.socket}, "mes")
    assert str(e.value) == f"the shiftkey broker on {broker.socket}: no token named `mes`"
    assert (e.value.status, e.value.message) == (None, "no token named `mes`")
    # HTTP: a wrong secret (401), then a token outside the client's scope (403).
    with pytest.raises(Forbidden) as f:
        ask(kind, {"url": broker.http_url, "secret": WRONG})
    assert str(f.value) == (
        f"the shiftkey broker on {broker.http_url} refused the client secret (HTTP 401)"
    )
    assert (f.value.status, f.value.message) == (401, "a configured client secret is required")
    assert WRONG not in str(f.value) + repr(f.value)
    with pytest.raises(Forbidden) as f:
        ask(kind, {"url": broker.http_url, "secret": PRINTER_SECRET}, "mes")
    assert f.value.status == 403
    assert f.value.message == "client `label-printer` may not get token `mes`"
    assert str(f.value).endswith("may not get token `mes` (HTTP 403)")
    assert PRINTER_SECRET not in str(f.value) + repr(f.value) + str(f.value.message)
    # A broker that is down.
    broker.stop()
    for kwargs, where in (
        ({"socket_path": broker.socket}, str(broker.socket)),
        ({"url": broker.http_url, "secret": PRINTER_SECRET}, broker.http_url),
    ):
        with pytest.raises(BrokerUnavailable) as u:
            ask(kind, {**kwargs, "timeout": 2})
        assert str(u.value) == f"no shiftkey broker is listening on {where}"
        assert (u.value.status, u.value.message) == (None, None)


def test_an_identity_provider_refusing_the_credential_is_token_refused(
    start_sim: Callable[..., Sim], tmp_path: Path, short_dir: Path, shiftkey_bin: Path
) -> None:
    """The broker cannot get the token (the identity provider refuses its client secret): on the
    socket, and as HTTP 503 on the listener."""
    sim = start_sim()
    (tmp_path / "state").mkdir()
    (short_dir / "run").mkdir()
    broker = BrokerProcess(shiftkey_bin, tmp_path / "state", short_dir / "run", sim)
    broker.process.env["GW_SECRET"] = "not-the-secret"
    broker.process.start()
    try:
        broker.process.wait_for(r"broker HTTP on http://")
        for kind in KINDS:
            with pytest.raises(TokenRefused) as e:
                ask(kind, {"socket_path": broker.socket, "timeout": 40})
            assert e.value.status is None and e.value.message is not None
            assert e.value.message.startswith("token `gw`: "), e.value.message
            with pytest.raises(TokenRefused) as e:
                ask(kind, {"url": broker.http_url, "secret": PRINTER_SECRET, "timeout": 40})
            assert e.value.status == 503
            assert e.value.message is not None and e.value.message.startswith("token `gw`: ")
            assert "not-the-secret" not in str(e.value)
    finally:
        broker.stop()


CANNED = [
    # (status, content type, body) → class, message
    (404, "application/json", b'{"ok":false,"error":"no token named `x`"}', TokenRefused,
     "no token named `x`"),
    (503, "application/json", b'{"ok":false,"error":"token `gw`: invalid_client"}', TokenRefused,
     "token `gw`: invalid_client"),
    (403, "text/plain", b"this listener serves only the local users its configuration names\n",
     Forbidden, "this listener serves only the local users its configuration names"),
    (421, "text/plain", b"this server answers to its loopback names (and those configured)\n",
     Forbidden, "this server answers to its loopback names (and those configured)"),
    (400, "application/json", b'{"ok":false,"error":"the body must be {\\"generation\\": N}"}',
     BrokerError, 'the body must be {"generation": N}'),
    (502, "text/html", b"<html>Bad Gateway</html>", BrokerUnavailable, "<html>Bad Gateway</html>"),
    (503, "text/plain", b"", BrokerUnavailable, None),
    (404, "text/plain", b"not found", BrokerUnavailable, "not found"),
    (408, "text/plain", b"the request took too long\n", BrokerUnavailable,
     "the request took too long"),
    (200, "application/json", b'{"ok":true,"token":"t1"', BrokerUnavailable, None),
    (200, "application/json", b'{"ok":true,"token":"t1","generation":1}', BrokerUnavailable, None),
    (200, "application/json", b"", BrokerUnavailable, None),
    # A server that echoes the request: its text never becomes the message.
    (500, "text/plain", f"Authorization: Bearer {PRINTER_SECRET}".encode(), BrokerUnavailable,
     None),
]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(("status", "ctype", "body", "cls", "message"), CANNED)
def test_every_answer_maps_to_a_class(
    kind: str, status: int, ctype: str, body: bytes, cls: Type[BrokerError],
    message: Any, fake_broker: FakeBrokerServer,
) -> None:
    fake_broker.canned = (status, ctype, body)
    with pytest.raises(BrokerError) as e:
        ask(kind, {"url": fake_broker.url, "secret": PRINTER_SECRET})
    assert type(e.value) is cls, repr(e.value)
    assert (e.value.status, e.value.message) == (status, message)
    assert str(e.value).startswith(f"the shiftkey broker on {fake_broker.url}")
    assert f"HTTP {status}" in str(e.value)
    assert PRINTER_SECRET not in str(e.value) + repr(e.value)
    assert "t1" not in str(e.value)


@pytest.mark.parametrize("kind", KINDS)
def test_a_socket_of_another_user_is_forbidden(
    kind: str, silent_unix: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import os

    monkeypatch.setattr(shiftkey_client.broker, "_peer_uid", lambda s: os.getuid() + 1)
    with pytest.raises(Forbidden, match="not trusted") as e:
        ask(kind, {"socket_path": silent_unix, "timeout": 10})
    assert e.value.status is None


@pytest.mark.parametrize("kind", KINDS)
def test_a_broker_that_never_answers_is_unavailable(
    kind: str, silent_unix: Path, silent_tcp: str
) -> None:
    for kwargs, where in (
        ({"socket_path": silent_unix}, str(silent_unix)),
        ({"url": silent_tcp, "secret": PRINTER_SECRET}, silent_tcp),
    ):
        with pytest.raises(BrokerUnavailable) as e:
            ask(kind, {**kwargs, "timeout": 1.0})
        assert str(e.value) == f"the shiftkey broker on {where} did not answer within 1 s"


# The adapters: a broker error during a request is also the library's error.


def _down() -> Broker:
    return Broker("/nonexistent/broker.sock", timeout=1)


def test_under_requests_a_broker_outage_is_a_request_exception(fake_api: FakeApi) -> None:
    session = requests.Session()
    session.auth = BrokerAuth("gw", broker=_down())
    with pytest.raises(requests.RequestException) as e:
        session.post(fake_api.url, data=BODY, timeout=10)
    assert isinstance(e.value, BrokerUnavailable) and isinstance(e.value, BrokerError)
    assert str(e.value) == "no shiftkey broker is listening on /nonexistent/broker.sock"
    assert isinstance(e.value.request, requests.PreparedRequest)
    assert e.value.request.url == fake_api.url
    assert type(e.value).__name__ == "RequestsBrokerUnavailable"
    assert not isinstance(e.value, httpx.HTTPError)
    back = pickle.loads(pickle.dumps(e.value))
    assert isinstance(back, BrokerUnavailable) and isinstance(back, requests.RequestException)
    # And `except BrokerUnavailable` catches it the same way.
    try:
        session.post(fake_api.url, data=BODY, timeout=10)
    except BrokerUnavailable as caught:
        assert isinstance(caught, requests.RequestException)
    assert fake_api.seen == []


def _post(kind: str, url: str, auth: BrokerAuth) -> None:
    """POSTs BODY to `url` with `auth` through requests, httpx or httpx's async client."""
    if kind == "requests":
        requests.post(url, data=BODY, auth=auth, timeout=10)
    elif kind == "httpx":
        with httpx.Client(auth=auth, timeout=10) as client:
            client.post(url, content=BODY)
    else:

        async def run() -> None:
            async with httpx.AsyncClient(auth=auth, timeout=10) as client:
                await client.post(url, content=BODY)

        asyncio.run(run())


@pytest.mark.parametrize("kind", ["httpx", "httpx-async"])
def test_under_httpx_a_broker_outage_is_an_http_error(kind: str, fake_api: FakeApi) -> None:
    auth = BrokerAuth("gw", broker=_down())

    def send() -> None:
        _post(kind, fake_api.url, auth)

    with pytest.raises(httpx.HTTPError) as e:
        send()
    assert isinstance(e.value, BrokerUnavailable)
    assert str(e.value) == "no shiftkey broker is listening on /nonexistent/broker.sock"
    assert str(e.value.request.url) == fake_api.url
    assert not isinstance(e.value, requests.RequestException)
    with pytest.raises(BrokerUnavailable):
        send()
    assert fake_api.seen == []


@pytest.mark.parametrize("kind", ["requests", "httpx", "httpx-async"])
def test_a_forbidden_report_keeps_its_class_and_status(
    kind: str, fake_api: FakeApi, fake_broker: FakeBrokerServer
) -> None:
    """The token came, the server said 401, and the report is refused (403): Forbidden, as the
    library's error too."""
    auth = BrokerAuth("gw", broker=Broker(url=fake_broker.url, secret=PRINTER_SECRET))
    auth.credentials.current()  # before the listener starts refusing
    fake_broker.canned = (403, "application/json", b'{"ok":false,"error":"no"}')
    library_error: Any = requests.RequestException if kind == "requests" else httpx.HTTPError
    with pytest.raises(Forbidden) as e:
        _post(kind, fake_api.url, auth)
    assert isinstance(e.value, library_error)
    assert (e.value.status, e.value.message) == (403, "no")
    assert len(fake_api.seen) == 1


def test_import_keeps_the_libraries_out_and_adapters_need_them() -> None:
    import subprocess
    import sys

    code = (
        "import sys; sys.modules['requests'] = None; sys.modules['httpx'] = None\n"
        "import shiftkey_client\n"
        "from shiftkey_client import BrokerAuth, Credentials, AsyncBroker, Forbidden\n"
        "from shiftkey_client import auth\n"
        "assert auth._FOR_REQUESTS == {} and auth._FOR_HTTPX == {}\n"
        "print('ok')"
    )
    src = str(Path(__file__).resolve().parents[1] / "src")
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env={"PYTHONPATH": src}
    )
    assert out.stdout.strip() == "ok", out.stderr
    code = (
        "import sys, shiftkey_client\n"
        "assert 'requests' not in sys.modules and 'httpx' not in sys.modules\n"
        "print('ok')"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env={"PYTHONPATH": src}
    )
    assert out.stdout.strip() == "ok", out.stderr
