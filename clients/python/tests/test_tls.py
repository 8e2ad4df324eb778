"""The broker's HTTPS listener on another host: a test CA made here, a fake broker served with
Python's `ssl`, and the client verifying it (`ca_file=`, SHIFTKEY_BROKER_CA_FILE), or refusing
it; plain http:// stays loopback-only; on a system without Unix sockets (as Windows), importing
and using HTTPS work."""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import json
import os
import socket
import ssl
import subprocess
import sys
from pathlib import Path
from typing import Any, Iterator, List

import httpx
import pytest
import requests

import shiftkey_client
from conftest import BODY, PRINTER_SECRET, FakeApi, FakeBrokerServer
from shiftkey_client import AsyncBroker, Broker, BrokerAuth, BrokerError, BrokerUnavailable, Token

x509 = pytest.importorskip("cryptography.x509")
from cryptography.hazmat.primitives import hashes, serialization  # noqa: E402
from cryptography.hazmat.primitives.asymmetric import ec  # noqa: E402
from cryptography.x509.oid import NameOID  # noqa: E402

SRC = str(Path(__file__).resolve().parents[1] / "src")


def _name(cn: str) -> Any:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _cert(
    subject: str, key: Any, issuer: str, issuer_key: Any, ca: bool, sans: List[Any]
) -> Any:
    now = datetime.datetime.now(datetime.timezone.utc)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(_name(issuer))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if ca:
        builder = builder.add_extension(
            x509.KeyUsage(
                digital_signature=True, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=True,
                crl_sign=True, encipher_only=False, decipher_only=False,
            ),
            critical=True,
        ).add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
    else:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        builder = builder.add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()), False
        )
        builder = builder.add_extension(
            x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), False
        )
    return builder.sign(issuer_key, hashes.SHA256())


def _pem(cert: Any) -> bytes:
    return bytes(cert.public_bytes(serialization.Encoding.PEM))


def _key_pem(key: Any) -> bytes:
    return bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )


class Pki:
    """A test CA (`ca`), another CA that signed nothing here (`other_ca`), and server
    certificates signed by the CA: `server` for 127.0.0.1 and localhost, `elsewhere` for
    another host name only."""

    def __init__(self, d: Path) -> None:
        ca_key = ec.generate_private_key(ec.SECP256R1())
        ca = _cert("shiftkey test CA", ca_key, "shiftkey test CA", ca_key, True, [])
        other_key = ec.generate_private_key(ec.SECP256R1())
        other = _cert("another CA", other_key, "another CA", other_key, True, [])
        self.ca, self.other_ca = d / "ca.pem", d / "other-ca.pem"
        self.ca.write_bytes(_pem(ca))
        self.other_ca.write_bytes(_pem(other))
        self.files = {}
        loopback = x509.IPAddress(ipaddress.ip_address("127.0.0.1"))
        for label, sans in (
            ("server", [x509.DNSName("localhost"), loopback]),
            ("elsewhere", [x509.DNSName("plant-sync-01.example")]),
        ):
            key = ec.generate_private_key(ec.SECP256R1())
            cert = _cert("shiftkey broker", key, "shiftkey test CA", ca_key, False, sans)
            chain, keyfile = d / f"{label}.pem", d / f"{label}.key"
            chain.write_bytes(_pem(cert))
            keyfile.write_bytes(_key_pem(key))
            self.files[label] = (chain, keyfile)

    def server_context(self, label: str = "server") -> ssl.SSLContext:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        chain, key = self.files[label]
        ctx.load_cert_chain(chain, key)
        return ctx


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return Pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture
def tls_broker(pki: Pki) -> Iterator[FakeBrokerServer]:
    b = FakeBrokerServer(tls=pki.server_context())
    yield b
    b.close()


def _ask(kind: str, b: Any, name: str = "gw") -> Token:
    if kind == "sync":
        return Broker._like(b).token(name) if isinstance(b, AsyncBroker) else b.token(name)
    a = b if isinstance(b, AsyncBroker) else AsyncBroker._like(b)
    return asyncio.run(a.token(name))


KINDS = ["sync", "async"]


@pytest.mark.parametrize("kind", KINDS)
def test_a_token_over_https_verified_with_the_ca_file(
    kind: str, pki: Pki, tls_broker: FakeBrokerServer
) -> None:
    assert tls_broker.url.startswith("https://127.0.0.1:")
    b = Broker(url=tls_broker.url, secret=PRINTER_SECRET, ca_file=pki.ca, timeout=10)
    assert b.url == tls_broker.url and b.ca_file == str(pki.ca)
    assert repr(b) == f"Broker(url={tls_broker.url!r}, ca_file={str(pki.ca)!r}, timeout=10)"
    t = _ask(kind, b)
    assert (t.value, t.generation) == ("t1", 1)
    # A report over HTTPS too, and the host name form of the URL.
    by_name = tls_broker.url.replace("127.0.0.1", "localhost")
    if kind == "sync":
        replacement = Broker(url=by_name, secret=PRINTER_SECRET, ca_file=pki.ca).rejected("gw", 1)
    else:
        a = AsyncBroker(url=by_name, secret=PRINTER_SECRET, ca_file=pki.ca)
        replacement = asyncio.run(a.rejected("gw", 1, served=True))
    assert replacement.value == "t2"
    assert tls_broker.gets == 1 and tls_broker.reports == [(1, kind == "async")]


@pytest.mark.parametrize("kind", KINDS)
def test_a_wrong_ca_is_refused_naming_the_certificate_problem(
    kind: str, pki: Pki, tls_broker: FakeBrokerServer
) -> None:
    b = Broker(url=tls_broker.url, secret=PRINTER_SECRET, ca_file=pki.other_ca, timeout=10)
    with pytest.raises(BrokerUnavailable) as e:
        _ask(kind, b)
    text = str(e.value)
    assert text.startswith(f"the TLS certificate of the shiftkey broker on {tls_broker.url}")
    assert "cannot be verified" in text and "certificate" in text
    assert "unable to get local issuer certificate" in text and str(pki.other_ca) in text
    assert PRINTER_SECRET not in text + repr(e.value)
    assert tls_broker.gets == 0, "the secret never went to an unverified server"


@pytest.mark.parametrize("kind", KINDS)
def test_the_system_trust_store_does_not_know_a_private_ca(
    kind: str, tls_broker: FakeBrokerServer
) -> None:
    """Without ca_file the system's CAs verify the broker: a private CA's certificate fails."""
    b = Broker(url=tls_broker.url, secret=PRINTER_SECRET, timeout=10)
    with pytest.raises(BrokerUnavailable, match=r"cannot be verified: .*\(the system's CAs\)"):
        _ask(kind, b)
    assert tls_broker.gets == 0


@pytest.mark.parametrize("kind", KINDS)
def test_the_host_name_is_checked(kind: str, pki: Pki) -> None:
    """A certificate of the right CA for another host: refused (check_hostname is on)."""
    server = FakeBrokerServer(tls=pki.server_context("elsewhere"))
    try:
        b = Broker(url=server.url, secret=PRINTER_SECRET, ca_file=pki.ca, timeout=10)
        with pytest.raises(BrokerUnavailable, match="cannot be verified: .*(mismatch|match)"):
            _ask(kind, b)
        assert server.gets == 0
    finally:
        server.close()


@pytest.mark.parametrize("kind", KINDS)
def test_plain_http_to_an_https_listener_and_back_fail_clearly(
    kind: str, pki: Pki, tls_broker: FakeBrokerServer, fake_broker: FakeBrokerServer
) -> None:
    # https:// to a plain HTTP listener: the TLS handshake fails.
    https_to_plain = fake_broker.url.replace("http://", "https://")
    b = Broker(url=https_to_plain, secret=PRINTER_SECRET, ca_file=pki.ca, timeout=5)
    with pytest.raises(BrokerUnavailable, match="TLS with the shiftkey broker on https://"):
        _ask(kind, b)
    # http:// to the TLS listener: no valid HTTP answer (and the secret went to loopback only).
    plain_to_https = tls_broker.url.replace("https://", "http://")
    with pytest.raises(BrokerUnavailable):
        _ask(kind, Broker(url=plain_to_https, secret=PRINTER_SECRET, timeout=5))


@pytest.mark.parametrize(
    "url",
    ["http://10.1.2.3:8732", "http://plant-sync-01:8733", "http://[2001:db8::1]:8732"],
)
def test_plain_http_off_loopback_is_refused_but_https_is_not(url: str, pki: Pki) -> None:
    with pytest.raises(ValueError, match="not loopback.*https://") as e:
        Broker(url=url, secret=PRINTER_SECRET)
    assert PRINTER_SECRET not in str(e.value)
    with pytest.raises(ValueError, match="not loopback"):
        AsyncBroker(url=url, secret=PRINTER_SECRET)
    https = url.replace("http://", "https://")
    b = Broker(url=https, secret=PRINTER_SECRET, ca_file=pki.ca)
    assert b.url == https and PRINTER_SECRET not in repr(b)


def test_https_settings_are_checked_at_construction(pki: Pki, tmp_path: Path) -> None:
    assert Broker(url="https://plant-sync-01", secret=PRINTER_SECRET).url == (
        "https://plant-sync-01:443"
    )
    with pytest.raises(ValueError, match="ca_file is for an https://"):
        Broker(url="http://127.0.0.1:8732", secret=PRINTER_SECRET, ca_file=pki.ca)
    with pytest.raises(ValueError, match="ca_file is for the broker's https://"):
        Broker("/run/broker.sock", ca_file=pki.ca)
    with pytest.raises(ValueError, match="cannot load the CA file"):
        Broker(url="https://plant-sync-01:8733", secret=PRINTER_SECRET, ca_file=tmp_path / "no")
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate\n")
    with pytest.raises(ValueError, match="cannot load the CA file"):
        Broker(url="https://plant-sync-01:8733", secret=PRINTER_SECRET, ca_file=garbage)
    with pytest.raises(ValueError, match="needs this client's secret"):
        Broker(url="https://plant-sync-01:8733", ca_file=pki.ca)


def test_from_env_reads_the_ca_file(
    pki: Pki, tls_broker: FakeBrokerServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SHIFTKEY_BROKER_URL", tls_broker.url)
    monkeypatch.setenv("SHIFTKEY_BROKER_SECRET", PRINTER_SECRET)
    monkeypatch.setenv("SHIFTKEY_BROKER_CA_FILE", str(pki.ca))
    b = Broker.from_env()
    assert b.ca_file == str(pki.ca)
    assert shiftkey_client.token("gw") == "t1"
    assert asyncio.run(AsyncBroker.from_env().token("gw")).value == "t1"
    # An http:// (loopback) URL has no certificate: the CA file does not apply.
    monkeypatch.setenv("SHIFTKEY_BROKER_URL", "http://127.0.0.1:8732")
    assert Broker.from_env().ca_file is None
    monkeypatch.setenv("SHIFTKEY_BROKER_URL", tls_broker.url)
    monkeypatch.delenv("SHIFTKEY_BROKER_CA_FILE")
    with pytest.raises(BrokerUnavailable, match="cannot be verified"):
        shiftkey_client.token("gw")


@pytest.mark.parametrize("kind", ["requests", "httpx", "httpx-async"])
def test_broker_auth_over_https(
    kind: str, pki: Pki, tls_broker: FakeBrokerServer, fake_api: FakeApi
) -> None:
    fake_api.accept = "t2"
    auth = BrokerAuth(
        "gw", broker=Broker(url=tls_broker.url, secret=PRINTER_SECRET, ca_file=pki.ca)
    )
    if kind == "requests":
        statuses = [requests.post(fake_api.url, data=BODY, auth=auth, timeout=10).status_code
                    for _ in range(5)]
    elif kind == "httpx":
        with httpx.Client(auth=auth, timeout=10) as client:
            statuses = [client.post(fake_api.url, content=BODY).status_code for _ in range(5)]
    else:

        async def run() -> List[int]:
            async with httpx.AsyncClient(auth=auth, timeout=10) as client:
                return [(await client.post(fake_api.url, content=BODY)).status_code
                        for _ in range(5)]

        statuses = asyncio.run(run())
    assert statuses == [200] * 5
    assert auth.healed == 1
    assert (tls_broker.gets, tls_broker.reports) == (1, [(1, False)])


def test_without_unix_sockets_https_still_works(
    pki: Pki, tls_broker: FakeBrokerServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As on Windows: no AF_UNIX, no SO_PEERCRED, no os.getuid, no asyncio Unix streams. (The
    event loop is made first: on Linux, asyncio itself needs AF_UNIX for its self-pipe.)"""
    loop = asyncio.new_event_loop()
    try:
        for module, attr in (
            (socket, "AF_UNIX"),
            (socket, "SO_PEERCRED"),
            (os, "getuid"),
            (asyncio, "open_unix_connection"),
        ):
            monkeypatch.delattr(module, attr, raising=False)
        b = Broker(url=tls_broker.url, secret=PRINTER_SECRET, ca_file=pki.ca)
        assert b.token("gw").value == "t1"
        assert loop.run_until_complete(AsyncBroker._like(b).token("gw")).value == "t1"
        with pytest.raises(BrokerError, match="on this system .*https://"):
            Broker("/run/shiftkey/broker.sock").token("gw")
        with pytest.raises(BrokerError, match="on this system .*https://"):
            loop.run_until_complete(AsyncBroker("/run/shiftkey/broker.sock").token("gw"))
    finally:
        loop.close()


def test_importing_without_unix_sockets(pki: Pki, tls_broker: FakeBrokerServer) -> None:
    """A fresh interpreter where the Unix-only names are gone before the import."""
    code = (
        "import asyncio, json, os, socket, sys\n"
        "loop = asyncio.new_event_loop()  # asyncio's self-pipe needs AF_UNIX on Linux\n"
        "for m, a in ((socket, 'AF_UNIX'), (socket, 'SO_PEERCRED'), (os, 'getuid'),\n"
        "             (os, 'getgid'), (asyncio, 'open_unix_connection')):\n"
        "    if hasattr(m, a): delattr(m, a)\n"
        "import shiftkey_client, requests\n"
        "from shiftkey_client import Broker, AsyncBroker, BrokerAuth, BrokerError\n"
        "url, secret, ca = sys.argv[1:4]\n"
        "b = Broker(url=url, secret=secret, ca_file=ca)\n"
        "got = [b.token('gw').value]\n"
        "a = AsyncBroker(url=url, secret=secret, ca_file=ca)\n"
        "got.append(loop.run_until_complete(a.token('gw')).value)\n"
        "try:\n"
        "    Broker('/x.sock').token('gw')\n"
        "except BrokerError as e:\n"
        "    got.append(type(e).__name__)\n"
        "print(json.dumps(got))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, tls_broker.url, PRINTER_SECRET, str(pki.ca)],
        capture_output=True, text=True, env={**os.environ, "PYTHONPATH": SRC}, timeout=60,
    )
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == ["t1", "t1", "BrokerError"]


def test_the_tls_answer_is_read_whole(pki: Pki) -> None:
    """A long (but valid) answer over TLS, in several records: read to its Content-Length."""
    server = FakeBrokerServer(tls=pki.server_context())
    long_token = "x" * 200_000
    body = json.dumps({"ok": True, "token": long_token, "generation": 7, "expires_in": 60})
    server.canned = (200, "application/json", body.encode())
    try:
        b = Broker(url=server.url, secret=PRINTER_SECRET, ca_file=pki.ca)
        assert b.token("gw").value == long_token
        assert asyncio.run(AsyncBroker._like(b).token("gw")) == Token(long_token, 7, 60)
    finally:
        server.close()


@pytest.mark.parametrize("kind", KINDS)
def test_an_https_listener_that_never_handshakes_times_out(
    kind: str, pki: Pki, silent_tcp: str
) -> None:
    url = silent_tcp.replace("http://", "https://")
    with pytest.raises(BrokerUnavailable) as e:
        _ask(kind, Broker(url=url, secret=PRINTER_SECRET, ca_file=pki.ca, timeout=1.0))
    assert str(e.value) == f"the shiftkey broker on {url} did not answer within 1 s"


def test_the_real_brokers_https_listener(
    pki: Pki, tmp_path: Path, short_dir: Path, shiftkey_bin: Path, start_sim: Any
) -> None:
    """`shiftkey broker` with `broker.https` and a certificate of the test CA: the token over
    HTTPS (both clients), a report, the wrong secret, the wrong CA."""
    import re

    from conftest import BrokerProcess
    from shiftkey_client import Forbidden

    sim = start_sim()
    state, run = tmp_path / "state", short_dir / "run"
    state.mkdir()
    run.mkdir()
    keys = tmp_path / "keys"
    keys.mkdir(mode=0o700)
    chain, key = pki.files["server"]
    (keys / "broker.key").write_bytes(key.read_bytes())
    (keys / "broker.key").chmod(0o600)
    broker = BrokerProcess(shiftkey_bin, state, run, sim)
    config = state / "shiftkey.toml"
    text = config.read_text()
    if "[broker.clients.label-printer]" not in text:
        pytest.fail("the broker configuration changed shape")
    config.write_text(
        text.replace(
            "[broker.clients.label-printer]",
            f'https = "127.0.0.1:0"\ntls_cert = "{chain}"\n'
            f'tls_key = {{ file = "{keys / "broker.key"}" }}\n[broker.clients.label-printer]',
        )
    )
    try:
        broker.start()
        line = broker.process.wait_for(r"broker HTTPS on (https://[^/\s]+)")
        url = line.group(1)
        assert re.fullmatch(r"https://127\.0\.0\.1:\d+", url)
        b = Broker(url=url, secret=PRINTER_SECRET, ca_file=pki.ca, timeout=20)
        t = b.token("gw")
        assert t.value.startswith("at_")
        assert asyncio.run(AsyncBroker._like(b).token("gw")).value == t.value
        replacement = asyncio.run(AsyncBroker._like(b).rejected("gw", t.generation))
        assert replacement.generation == t.generation + 1
        assert b.token("gw").value == replacement.value
        with pytest.raises(Forbidden) as e:
            Broker(url=url, secret="printer-secret-2-abcdefghijklmnopqrstuvwxyz",
                   ca_file=pki.ca).token("gw")
        assert e.value.status == 401
        for kind in KINDS:
            with pytest.raises(BrokerUnavailable, match="cannot be verified"):
                _ask(kind, Broker(url=url, secret=PRINTER_SECRET, ca_file=pki.other_ca))
    finally:
        broker.stop()
