"""`Credentials`: the google-auth surface, the cache (one broker round trip per token generation,
counted at a fake broker and at the real one), reports, and concurrent callers."""

from __future__ import annotations

import asyncio
import threading
import time
from datetime import datetime, timedelta, timezone
from typing import Any, Callable, Dict, List, Tuple

import httpx
import pytest
import requests

import shiftkey_client.credentials as credentials_module
from conftest import BODY, PRINTER_SECRET, BrokerProcess, FakeApi, FakeBrokerServer, Sim
from shiftkey_client import AsyncBroker, Broker, BrokerAuth, Credentials, Token
from shiftkey_client.credentials import refresh_margin

Stack = Callable[..., Tuple[Sim, BrokerProcess]]


class Clock:
    """Replaces the cache's monotonic clock: `now` moves only when told."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.now = 1000.0
        monkeypatch.setattr(credentials_module, "_monotonic", lambda: self.now)


class CountingBroker(Broker):
    """A `Broker` that counts its calls (and passes them on to the real broker it names)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.calls: Dict[str, int] = {"token": 0, "rejected": 0}

    def token(self, name: str) -> Token:
        self.calls["token"] += 1
        return super().token(name)

    def rejected(self, name: str, generation: int, served: bool = False) -> Token:
        self.calls["rejected"] += 1
        return super().rejected(name, generation, served)


def _broker(fake: FakeBrokerServer) -> Broker:
    return Broker(url=fake.url, secret=PRINTER_SECRET, timeout=10)


@pytest.mark.parametrize(
    ("expires_in", "margin"), [(3600, 60), (600, 60), (300, 30), (100, 10), (60, 10), (4, 10)]
)
def test_the_margin_is_a_tenth_between_10_and_60_seconds(expires_in: int, margin: float) -> None:
    assert refresh_margin(expires_in) == margin


def test_the_google_auth_surface(
    fake_broker: FakeBrokerServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = Clock(monkeypatch)
    c = Credentials("gw", broker=_broker(fake_broker))
    assert (c.token, c.expiry, c.generation, c.valid, c.expired) == (None, None, None, False, False)
    with pytest.raises(ValueError, match="no token yet"):
        c.apply({})
    headers: Dict[str, str] = {}
    c.before_request(None, "GET", "https://mes.example/api", headers)
    assert headers == {"Authorization": "Bearer t1"}
    assert (c.token, c.generation, c.valid, c.expired) == ("t1", 1, True, False)
    assert c.expiry is not None and c.expiry.tzinfo is None  # naive UTC, as google-auth
    utcnow = datetime.now(timezone.utc).replace(tzinfo=None)
    assert abs(c.expiry - (utcnow + timedelta(seconds=3600))) < timedelta(seconds=5)
    assert fake_broker.gets == 1
    # Kept: more requests, no broker call.
    for _ in range(10):
        c.before_request(None, "GET", "https://mes.example/api", headers)
    other: Dict[str, str] = {}
    c.apply(other)
    c.apply(headers, token="explicit")
    assert other == {"Authorization": "Bearer t1"} and headers["Authorization"] == "Bearer explicit"
    assert fake_broker.gets == 1
    # Until 60 s (a tenth of 3600 s, at most 60 s) before it expires.
    clock.now += 3600 - 60 - 1
    assert c.valid and not c.expired
    c.before_request(None, "GET", "https://mes.example/api", headers)
    assert fake_broker.gets == 1
    clock.now += 1
    assert c.expired and not c.valid and c.token == "t1"
    c.before_request(None, "GET", "https://mes.example/api", headers)
    assert fake_broker.gets == 2 and c.valid
    # refresh() always asks.
    c.refresh()
    c.refresh(request=object())
    assert fake_broker.gets == 4
    assert "t1" not in repr(c) and "generation=1" in repr(c)


def test_a_report_keeps_the_replacement(
    fake_broker: FakeBrokerServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    Clock(monkeypatch)
    c = Credentials("gw", broker=_broker(fake_broker))
    t1 = c.current()
    assert (t1.value, fake_broker.gets) == ("t1", 1)
    t2 = c.rejected()  # the kept token, refused
    assert t2.value == "t2" and c.token == "t2" and c.valid
    assert fake_broker.reports == [(1, False)]
    assert c.current() == t2 and fake_broker.gets == 1
    # Another caller's 401 to t1 comes late: the replacement is already here, no report.
    assert c.rejected(t1) == t2
    assert fake_broker.reports == [(1, False)]
    # t2 served, then died: the report says so.
    c.accepted(t2)
    assert c.rejected(t2).value == "t3"
    assert fake_broker.reports == [(1, False), (2, True)]
    assert fake_broker.gets == 1


def test_a_token_shorter_than_its_margin_is_not_kept(fake_broker: FakeBrokerServer) -> None:
    fake_broker.expires_in = 8  # the margin is 10 s: every use asks
    c = Credentials("gw", broker=_broker(fake_broker))
    for _ in range(3):
        c.current()
    assert fake_broker.gets == 3 and not c.valid and c.token == "t1"
    fake_broker.expires_in = 20  # kept for 10 s
    c.refresh()
    c.current()
    assert fake_broker.gets == 4 and c.valid


def test_concurrent_threads_share_one_broker_call(fake_broker: FakeBrokerServer) -> None:
    fake_broker.delay = 0.3
    c = Credentials("gw", broker=_broker(fake_broker))
    got: List[str] = []
    threads = [threading.Thread(target=lambda: got.append(c.current().value)) for _ in range(10)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert got == ["t1"] * 10
    assert fake_broker.gets == 1


def test_concurrent_tasks_share_one_broker_call(fake_broker: FakeBrokerServer) -> None:
    fake_broker.delay = 0.3
    c = Credentials("gw", broker=AsyncBroker(url=fake_broker.url, secret=PRINTER_SECRET))

    async def run() -> List[Token]:
        return list(await asyncio.gather(*(c.acurrent() for _ in range(10))))

    assert {t.value for t in asyncio.run(run())} == {"t1"}
    assert fake_broker.gets == 1
    # A second event loop (asyncio.run again): its own lock, the same kept token.
    assert asyncio.run(c.acurrent()).value == "t1" and fake_broker.gets == 1

    async def report() -> List[Token]:
        t1 = await c.acurrent()
        return list(await asyncio.gather(*(c.arejected(t1) for _ in range(5))))

    assert {t.value for t in asyncio.run(report())} == {"t2"}
    assert fake_broker.reports == [(1, False)]
    asyncio.run(c.arefresh())
    assert fake_broker.gets == 2


def test_either_broker_serves_both_worlds(fake_broker: FakeBrokerServer) -> None:
    """Credentials over an AsyncBroker work from blocking code too, and the other way round."""
    a = Credentials("gw", broker=AsyncBroker(url=fake_broker.url, secret=PRINTER_SECRET))
    assert a.current().value == "t1"
    s = Credentials("gw", broker=_broker(fake_broker))
    assert asyncio.run(s.acurrent()).value == "t1"
    assert fake_broker.gets == 2


KINDS = ["requests", "httpx", "httpx-async"]


def _send_many(kind: str, auth: BrokerAuth, url: str, n: int) -> List[int]:
    """`n` POSTs through one session or client: their statuses."""
    if kind == "requests":
        with requests.Session() as session:
            session.auth = auth
            return [session.post(url, data=BODY, timeout=10).status_code for _ in range(n)]
    if kind == "httpx":
        with httpx.Client(auth=auth, timeout=10) as client:
            return [client.post(url, content=BODY).status_code for _ in range(n)]

    async def run() -> List[int]:
        async with httpx.AsyncClient(auth=auth, timeout=10) as client:
            return [(await client.post(url, content=BODY)).status_code for _ in range(n)]

    return asyncio.run(run())


@pytest.mark.parametrize("kind", KINDS)
def test_fifty_requests_one_broker_call_and_a_401_one_report(
    kind: str, fake_api: FakeApi, fake_broker: FakeBrokerServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def no_thread(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("the async flow asks the broker on asyncio, not in a thread")

    monkeypatch.setattr(asyncio, "to_thread", no_thread)
    fake_api.accept = "t1"
    auth = BrokerAuth("gw", broker=_broker(fake_broker))
    assert _send_many(kind, auth, fake_api.url, 50) == [200] * 50
    assert (fake_broker.gets, fake_broker.reports) == (1, [])
    # The server restarts: t1 is refused once, reported once (it had served), replaced, kept.
    fake_api.accept = "t2"
    assert _send_many(kind, auth, fake_api.url, 50) == [200] * 50
    assert (fake_broker.gets, fake_broker.reports) == (1, [(1, True)])
    assert auth.healed == 1
    assert [a for a, _ in fake_api.seen].count("Bearer t1") == 51


def test_the_real_broker_is_asked_once_per_generation(stack: Stack) -> None:
    sim, broker = stack()
    counting = CountingBroker(broker.socket)
    auth = BrokerAuth("gw", broker=counting)
    with requests.Session() as session:
        session.auth = auth
        for _ in range(50):
            assert session.post(sim.api, data=BODY, timeout=10).status_code == 200
        assert counting.calls == {"token": 1, "rejected": 0}
        before = broker.stats()
        sim.restart()
        for _ in range(20):
            assert session.post(sim.api, data=BODY, timeout=10).status_code == 200
    assert counting.calls == {"token": 1, "rejected": 1}
    assert auth.healed == 1 and sim.rejections() == 1
    assert broker.stats()["reactive"] == before["reactive"] + 1


def test_a_shared_credentials_serves_several_auths(fake_broker: FakeBrokerServer,
                                                   fake_api: FakeApi) -> None:
    fake_api.accept = "t1"
    c = Credentials("gw", broker=_broker(fake_broker))
    for _ in range(3):
        auth = BrokerAuth(c)
        assert auth.credentials is c and auth.name == "gw"
        assert requests.post(fake_api.url, data=BODY, auth=auth, timeout=10).status_code == 200
    assert fake_broker.gets == 1
    with pytest.raises(ValueError):
        BrokerAuth(c, broker=_broker(fake_broker))


def test_the_kept_token_survives_the_wall_clock(
    fake_broker: FakeBrokerServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The cache runs on the monotonic clock: the wall clock jumping does not matter."""
    c = Credentials("gw", broker=_broker(fake_broker))
    c.current()
    real = time.time
    monkeypatch.setattr(time, "time", lambda: real() + 7200)
    assert c.valid and c.current().value == "t1" and fake_broker.gets == 1
