"""`BrokerAuth`'s own logic with requests, httpx and httpx's async client, against a fake broker
that always has a newer token and a fake API that accepts only the token it is told to."""

from __future__ import annotations

import asyncio
import time
from typing import AsyncIterator, Iterator, List, Tuple, Union

import httpx
import pytest
import requests

from conftest import BODY, FakeApi
from shiftkey_client import Broker, BrokerAuth, BrokerError, Token

KINDS = ["requests", "httpx", "httpx-async"]


class FakeBroker(Broker):
    """Hands out `t1` (generation 1); each report of the current generation gives the next."""

    def __init__(self) -> None:
        super().__init__("/nonexistent/broker.sock")
        self.generation = 1
        self.reports: List[int] = []
        self.served: List[bool] = []

    def token(self, name: str) -> Token:
        return Token(f"t{self.generation}", self.generation, 60)

    def rejected(self, name: str, generation: int, served: bool = False) -> Token:
        self.reports.append(generation)
        self.served.append(served)
        if generation == self.generation:
            self.generation += 1
        return self.token(name)


def _chunks() -> Iterator[bytes]:
    yield BODY[:10]
    yield BODY[10:]


async def _achunks() -> AsyncIterator[bytes]:
    yield BODY[:10]
    yield BODY[10:]


def send(kind: str, auth: BrokerAuth, url: str, body: Union[bytes, str, None] = BODY,
         streamed: bool = False) -> Tuple[int, List[int]]:
    """POSTs `body` (or BODY in two chunks, when `streamed`): the status and the history's."""
    if kind == "requests":
        r = requests.post(url, data=_chunks() if streamed else body, auth=auth, timeout=10)
        return r.status_code, [h.status_code for h in r.history]
    if kind == "httpx":
        with httpx.Client(auth=auth, timeout=10) as client:
            x = client.post(url, content=_chunks() if streamed else body)
    else:

        async def run() -> httpx.Response:
            async with httpx.AsyncClient(auth=auth, timeout=10) as client:
                return await client.post(url, content=_achunks() if streamed else body)

        x = asyncio.run(run())
    return x.status_code, [h.status_code for h in x.history]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("body", [BODY, BODY.decode(), None])
def test_a_401_is_reported_and_the_request_resent_once_with_the_replacement(
    kind: str, body: Union[bytes, str, None], fake_api: FakeApi
) -> None:
    broker = FakeBroker()
    fake_api.accept = "t2"
    auth = BrokerAuth("gw", broker=broker)
    assert send(kind, auth, fake_api.url, body) == (200, [401])
    expected = b"" if body is None else BODY
    assert fake_api.seen == [("Bearer t1", expected), ("Bearer t2", expected)]
    assert broker.reports == [1] and auth.healed == 1
    # The replacement goes on the next request at once.
    assert send(kind, auth, fake_api.url) == (200, [])
    assert broker.reports == [1] and auth.healed == 1


@pytest.mark.parametrize("kind", KINDS)
def test_a_second_401_goes_to_the_caller_without_a_loop(kind: str, fake_api: FakeApi) -> None:
    broker = FakeBroker()
    auth = BrokerAuth("gw", broker=broker)
    assert send(kind, auth, fake_api.url) == (401, [401])
    assert [a for a, _ in fake_api.seen] == ["Bearer t1", "Bearer t2"]
    assert broker.reports == [1] and auth.healed == 0


@pytest.mark.parametrize("kind", KINDS)
def test_a_streamed_body_is_sent_once_but_the_401_is_reported(
    kind: str, fake_api: FakeApi
) -> None:
    broker = FakeBroker()
    fake_api.accept = "t2"
    auth = BrokerAuth("gw", broker=broker)
    assert send(kind, auth, fake_api.url, streamed=True) == (401, [])
    assert fake_api.seen == [("Bearer t1", BODY)]
    assert broker.reports == [1] and auth.healed == 0
    assert send(kind, auth, fake_api.url) == (200, [])


@pytest.mark.parametrize("kind", KINDS)
def test_a_report_says_whether_the_server_had_accepted_the_token(
    kind: str, fake_api: FakeApi
) -> None:
    broker = FakeBroker()
    auth = BrokerAuth("gw", broker=broker)
    # t1 is refused at once: it never served.
    fake_api.accept = "t2"
    assert send(kind, auth, fake_api.url) == (200, [401])
    # t2 served (just now, and again), then the server restarts and refuses it.
    assert send(kind, auth, fake_api.url) == (200, [])
    fake_api.accept = "t3"
    assert send(kind, auth, fake_api.url) == (200, [401])
    assert broker.reports == [1, 2]
    assert broker.served == [False, True]


@pytest.mark.parametrize("kind", KINDS)
def test_no_401_no_report(kind: str, fake_api: FakeApi) -> None:
    broker = FakeBroker()
    fake_api.accept = "t1"
    auth = BrokerAuth("gw", broker=broker)
    assert send(kind, auth, fake_api.url) == (200, [])
    assert broker.reports == [] and len(fake_api.seen) == 1


@pytest.mark.parametrize("kind", KINDS)
def test_a_broker_error_reaches_the_caller(kind: str, fake_api: FakeApi) -> None:
    auth = BrokerAuth("gw", broker=Broker("/nonexistent/broker.sock", timeout=1))
    with pytest.raises(BrokerError, match="no shiftkey broker is listening on /nonexistent"):
        send(kind, auth, fake_api.url)
    assert fake_api.seen == []


def test_repr_names_the_token_not_its_value() -> None:
    auth = BrokerAuth("gw", broker=FakeBroker())
    assert repr(auth) == (
        "BrokerAuth('gw', broker=Broker(socket_path='/nonexistent/broker.sock', timeout=40), "
        "healed=0)"
    )


def test_async_broker_calls_do_not_block_the_event_loop(fake_api: FakeApi) -> None:
    class SlowBroker(FakeBroker):
        def token(self, name: str) -> Token:
            time.sleep(0.5)
            return super().token(name)

    fake_api.accept = "t1"
    auth = BrokerAuth("gw", broker=SlowBroker())

    async def run() -> Tuple[int, int]:
        ticks = 0

        async def tick() -> None:
            nonlocal ticks
            while True:
                await asyncio.sleep(0.01)
                ticks += 1

        ticker = asyncio.create_task(tick())
        async with httpx.AsyncClient(auth=auth, timeout=10) as client:
            r = await client.post(fake_api.url, content=BODY)
        ticker.cancel()
        return r.status_code, ticks

    status, ticks = asyncio.run(run())
    assert status == 200
    assert ticks >= 5, "the loop ran while the broker answered"


@pytest.mark.parametrize("kind", KINDS)
def test_a_401_after_a_redirect_to_another_host_is_left_alone(
    kind: str, fake_api: FakeApi
) -> None:
    """The library drops the token on a redirect to another host: the 401 there says nothing
    about the token, and that host must not get the replacement."""
    broker = FakeBroker()
    fake_api.accept = "t1"
    auth = BrokerAuth("gw", broker=broker)
    redirect = fake_api.url.replace("/api", "/redirect")
    if kind == "requests":
        r = requests.post(redirect, data=BODY, auth=auth, timeout=10)
        status = r.status_code
    elif kind == "httpx":
        with httpx.Client(auth=auth, timeout=10, follow_redirects=True) as client:
            status = client.post(redirect, content=BODY).status_code
    else:

        async def run() -> int:
            async with httpx.AsyncClient(auth=auth, timeout=10, follow_redirects=True) as c:
                return (await c.post(redirect, content=BODY)).status_code

        status = asyncio.run(run())
    assert status == 401
    assert fake_api.seen == [("", BODY)]
    assert broker.reports == [] and auth.healed == 0
