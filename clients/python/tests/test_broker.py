"""Against the real `shiftkey broker` and the `shiftkey sim` emulator: expiry, a server-side kill,
a broker restart, a broker that is down, the HTTP listener's client secret."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Callable, Iterator, List, Tuple

import httpx
import pytest
import requests

from conftest import BODY, BrokerProcess, FakeApi, Sim
from shiftkey_client import Broker, BrokerAuth, BrokerError, Token, token

Stack = Callable[..., Tuple[Sim, BrokerProcess]]


class RecordingBroker(Broker):
    """A broker client that remembers the generation of every token it got."""

    def __init__(self, socket_path: Path) -> None:
        super().__init__(socket_path)
        self.generations: List[int] = []

    def token(self, name: str) -> Token:
        t = super().token(name)
        self.generations.append(t.generation)
        return t


def test_tokens_expiring_every_4s_never_show(stack: Stack) -> None:
    sim, broker = stack(access_ttl_secs=4)
    recording = RecordingBroker(broker.socket)
    auth = BrokerAuth("gw", broker=recording)
    session = requests.Session()
    session.auth = auth
    statuses: List[int] = []
    start = time.monotonic()
    while time.monotonic() - start < 10:
        statuses.append(session.post(sim.api, data=BODY, timeout=10).status_code)
        time.sleep(0.2)
    assert statuses and set(statuses) == {200}, statuses
    assert auth.healed == sim.rejections(), "every 401 the server sent was healed"
    # 10 s of calls with 4 s tokens: several generations were used, in order.
    assert len(set(recording.generations)) >= 2, recording.generations
    assert recording.generations == sorted(recording.generations)
    assert sim.grants() >= 3, sim.stats()


def test_a_server_side_kill_is_healed_for_requests(stack: Stack) -> None:
    sim, broker = stack()
    auth = BrokerAuth("gw", broker=Broker(broker.socket))
    session = requests.Session()
    for _ in range(3):
        r = session.post(sim.api, data=BODY, auth=auth, timeout=10)
        assert r.status_code == 200 and not r.history
    before = broker.stats()
    sim.restart()
    r = session.post(sim.api, data=BODY, auth=auth, timeout=10)
    assert r.status_code == 200, r.text
    assert [h.status_code for h in r.history] == [401]
    assert auth.healed == 1
    assert sim.rejections() == 1
    after = broker.stats()
    assert after["generation"] == before["generation"] + 1
    assert after["reactive"] == before["reactive"] + 1
    # And the replacement keeps working.
    r = session.post(sim.api, data=BODY, auth=auth, timeout=10)
    assert r.status_code == 200 and not r.history


def test_a_restart_right_after_a_heal_is_healed_too(stack: Stack) -> None:
    """The replacement served, then a second restart killed it seconds later: the report says it
    served, and the broker replaces it although it replaced its predecessor moments ago."""
    sim, broker = stack()
    auth = BrokerAuth("gw", broker=Broker(broker.socket))
    session = requests.Session()
    session.auth = auth
    assert session.post(sim.api, data=BODY, timeout=10).status_code == 200
    for _ in range(2):
        sim.restart()
        r = session.post(sim.api, data=BODY, timeout=10)
        assert r.status_code == 200, r.text
        assert [h.status_code for h in r.history] == [401]
    assert auth.healed == 2 and sim.rejections() == 2
    assert broker.stats()["reactive"] == 2


def test_a_server_side_kill_is_healed_for_httpx(stack: Stack) -> None:
    sim, broker = stack()
    auth = BrokerAuth("gw", broker=Broker(url=broker.http_url, secret=broker.secret))
    with httpx.Client(auth=auth, timeout=10) as client:
        assert client.post(sim.api, content=BODY).status_code == 200
        sim.restart()
        r = client.post(sim.api, content=BODY)
        assert r.status_code == 200, r.text
        assert [h.status_code for h in r.history] == [401]
        assert auth.healed == 1
        assert client.post(sim.api, content=BODY).status_code == 200
    assert sim.rejections() == 1


def test_a_server_side_kill_is_healed_for_async_httpx(stack: Stack) -> None:
    sim, broker = stack()
    auth = BrokerAuth("gw", broker=Broker(broker.socket))

    async def run() -> List[httpx.Response]:
        async with httpx.AsyncClient(auth=auth, timeout=10) as client:
            first = await client.post(sim.api, content=BODY)
            sim.restart()
            return [first, await client.post(sim.api, content=BODY)]

    first, healed = asyncio.run(run())
    assert first.status_code == 200 and healed.status_code == 200
    assert [h.status_code for h in healed.history] == [401]
    assert auth.healed == 1 and sim.rejections() == 1


def test_a_replacement_rejected_again_goes_to_the_caller(stack: Stack, fake_api: FakeApi) -> None:
    _sim, broker = stack()
    auth = BrokerAuth("gw", broker=Broker(broker.socket))
    r = requests.post(fake_api.url, data=BODY, auth=auth, timeout=10)
    assert r.status_code == 401
    assert [h.status_code for h in r.history] == [401]
    assert len(fake_api.seen) == 2, "sent once, resent once with the replacement"
    assert fake_api.seen[0][0] != fake_api.seen[1][0]
    assert auth.healed == 0
    # The replacement came from a report less than its minimum interval ago: the broker does not
    # replace it again (no refresh storm), so there is nothing better to resend.
    r = requests.post(fake_api.url, data=BODY, auth=auth, timeout=10)
    assert r.status_code == 401 and not r.history
    assert len(fake_api.seen) == 3
    assert fake_api.seen[2][0] == fake_api.seen[1][0]
    assert broker.stats()["reactive"] == 1


def _chunks() -> Iterator[bytes]:
    yield b'{"header":{},'
    yield b'"body":{}}'


def test_a_streamed_body_is_not_resent_but_the_rejection_is_reported(
    stack: Stack, fake_api: FakeApi
) -> None:
    _sim, broker = stack()
    auth = BrokerAuth("gw", broker=Broker(broker.socket))
    before = broker.stats()["generation"]
    r = requests.post(fake_api.url, data=_chunks(), auth=auth, timeout=10)
    assert r.status_code == 401 and not r.history
    assert fake_api.seen[0][1] == BODY and len(fake_api.seen) == 1
    # The report got a new token for the next request.
    assert broker.stats()["generation"] == before + 1


def test_the_client_keeps_working_across_a_broker_restart(stack: Stack) -> None:
    sim, broker = stack(access_ttl_secs=4)
    auths = [
        BrokerAuth("gw", broker=Broker(broker.socket, timeout=10)),
        BrokerAuth("gw", broker=Broker(url=broker.http_url, secret=broker.secret, timeout=10)),
    ]
    session = requests.Session()
    for auth in auths:
        assert session.post(sim.api, data=BODY, auth=auth, timeout=10).status_code == 200
    before = Broker(broker.socket).token("gw").generation
    broker.stop()
    for auth in auths:
        with pytest.raises(BrokerError, match="no shiftkey broker is listening on"):
            session.post(sim.api, data=BODY, auth=auth, timeout=10)
    broker.start()  # same store, same socket path, same port
    # The stored token is adopted with its generation: a client's generations never go back.
    assert Broker(broker.socket).token("gw").generation >= before
    for auth in auths:
        r = session.post(sim.api, data=BODY, auth=auth, timeout=10)
        assert r.status_code == 200, r.text
    # Past the adopted token's lifetime too.
    time.sleep(4.5)
    for auth in auths:
        assert session.post(sim.api, data=BODY, auth=auth, timeout=10).status_code == 200


def test_a_stopped_broker_fails_fast_with_a_clear_message(stack: Stack) -> None:
    _sim, broker = stack()
    broker.stop()
    start = time.monotonic()
    with pytest.raises(BrokerError) as e:
        Broker(broker.socket, timeout=1.0).token("gw")
    assert str(e.value) == f"no shiftkey broker is listening on {broker.socket}"
    with pytest.raises(BrokerError) as e:
        Broker(url=broker.http_url, secret=broker.secret, timeout=1.0).token("gw")
    assert str(e.value) == f"no shiftkey broker is listening on {broker.http_url}"
    assert time.monotonic() - start < 5


def test_the_http_listener_wants_the_right_secret(stack: Stack) -> None:
    sim, broker = stack()
    wrong = "printer-secret-2-abcdefghijklmnopqrstuvwxyz"
    bad = Broker(url=broker.http_url, secret=wrong, timeout=10)
    with pytest.raises(BrokerError) as e:
        bad.token("gw")
    assert str(e.value) == (
        f"the shiftkey broker on {broker.http_url} refused the client secret (HTTP 401)"
    )
    with pytest.raises(BrokerError, match=r"HTTP 401"):
        bad.rejected("gw", 1)
    for text in (str(e.value), repr(e.value), repr(bad)):
        assert wrong not in text and broker.secret not in text

    good = Broker(url=broker.http_url, secret=broker.secret, timeout=10)
    t = good.token("gw")
    assert t.value.startswith("at_") and t.generation >= 1 and t.expires_in > 0
    assert broker.secret not in repr(good) and t.value not in repr(t)
    r = requests.post(sim.api, data=BODY, headers={"Authorization": f"Bearer {t.value}"})
    assert r.status_code == 200
    # A token this client is not scoped to: 403 with the broker's reason.
    with pytest.raises(BrokerError) as e:
        good.token("mes")
    assert "may not get token `mes`" in str(e.value) and "HTTP 403" in str(e.value)
    assert broker.secret not in str(e.value)
    # Reporting refreshes; the same generation again changes nothing.
    replacement = good.rejected("gw", t.generation)
    assert replacement.generation == t.generation + 1 and replacement.value != t.value
    assert good.rejected("gw", t.generation).generation == replacement.generation


def test_socket_errors_carry_the_brokers_reason(stack: Stack) -> None:
    _sim, broker = stack()
    with pytest.raises(BrokerError) as e:
        Broker(broker.socket, timeout=10).token("mes")
    assert str(e.value) == f"the shiftkey broker on {broker.socket}: no token named `mes`"


def test_module_token_follows_the_environment(stack: Stack, monkeypatch: pytest.MonkeyPatch) -> None:
    sim, broker = stack()
    monkeypatch.delenv("SHIFTKEY_BROKER_URL", raising=False)
    monkeypatch.setenv("SHIFTKEY_BROKER_SOCKET", str(broker.socket))
    by_socket = token("gw")
    assert isinstance(by_socket, str)
    assert by_socket == Broker(broker.socket).token("gw").value
    monkeypatch.setenv("SHIFTKEY_BROKER_URL", broker.http_url)
    monkeypatch.setenv("SHIFTKEY_BROKER_SECRET", broker.secret)
    assert token("gw") == by_socket
    # BrokerAuth without a broker takes it from the environment too (HTTP here).
    auth = BrokerAuth("gw")
    assert auth.broker.url == broker.http_url
    assert requests.post(sim.api, data=BODY, auth=auth, timeout=10).status_code == 200
