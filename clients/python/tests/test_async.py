"""`AsyncBroker` against the real broker (socket and HTTP listener), and `BrokerAuth`'s async flow
asking it on asyncio, without a worker thread."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any, Callable, List, Tuple

import httpx
import pytest

from conftest import BODY, PRINTER_SECRET, BrokerProcess, Sim
from shiftkey_client import AsyncBroker, Broker, BrokerAuth, Token

Stack = Callable[..., Tuple[Sim, BrokerProcess]]


@pytest.fixture
def no_threads(monkeypatch: pytest.MonkeyPatch) -> None:
    async def no_thread(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("asked in a worker thread")

    monkeypatch.setattr(asyncio, "to_thread", no_thread)


@pytest.mark.parametrize("where", ["socket", "http"])
def test_token_and_rejected_as_coroutines(where: str, stack: Stack) -> None:
    _sim, broker = stack()
    if where == "socket":
        sync, a = Broker(broker.socket), AsyncBroker(broker.socket, timeout=10)
    else:
        sync = Broker(url=broker.http_url, secret=PRINTER_SECRET)
        a = AsyncBroker(url=broker.http_url, secret=PRINTER_SECRET, timeout=10)

    async def run() -> List[Token]:
        t = await a.token("gw")
        replacement = await a.rejected("gw", t.generation)
        again = await a.rejected("gw", t.generation, served=False)
        return [t, replacement, again]

    t, replacement, again = asyncio.run(run())
    assert t.value.startswith("at_") and t.expires_in > 0
    assert replacement.generation == t.generation + 1 and replacement.value != t.value
    assert again == replacement, "the same generation again changes nothing"
    now = sync.token("gw")
    assert (now.value, now.generation) == (replacement.value, replacement.generation)
    assert PRINTER_SECRET not in repr(a)
    assert repr(a).startswith("AsyncBroker(")


def test_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SHIFTKEY_BROKER_URL", raising=False)
    monkeypatch.setenv("SHIFTKEY_BROKER_SOCKET", "/env/broker.sock")
    a = AsyncBroker.from_env(timeout=3)
    assert isinstance(a, AsyncBroker) and a.socket_path == "/env/broker.sock" and a.timeout == 3
    monkeypatch.setenv("SHIFTKEY_BROKER_URL", "http://127.0.0.1:8732")
    monkeypatch.setenv("SHIFTKEY_BROKER_SECRET", PRINTER_SECRET)
    a = AsyncBroker.from_env()
    assert a.url == "http://127.0.0.1:8732" and a.socket_path is None
    assert repr(a) == "AsyncBroker(url='http://127.0.0.1:8732', timeout=40)"


@pytest.mark.parametrize("where", ["socket", "http"])
def test_a_server_side_kill_is_healed_on_asyncio(
    where: str, stack: Stack, no_threads: None
) -> None:
    sim, broker = stack()
    if where == "socket":
        a: Any = AsyncBroker(broker.socket)
    else:
        a = Broker(url=broker.http_url, secret=PRINTER_SECRET)  # a plain Broker: made async
    auth = BrokerAuth("gw", broker=a)

    async def run() -> List[httpx.Response]:
        async with httpx.AsyncClient(auth=auth, timeout=10) as client:
            first = [await client.post(sim.api, content=BODY) for _ in range(5)]
            sim.restart()
            return first + [await client.post(sim.api, content=BODY) for _ in range(5)]

    responses = asyncio.run(run())
    assert [r.status_code for r in responses] == [200] * 10
    assert [h.status_code for h in responses[5].history] == [401]
    assert auth.healed == 1 and sim.rejections() == 1
    assert broker.stats()["reactive"] == 1


def test_an_async_broker_serves_blocking_clients_too(stack: Stack) -> None:
    """BrokerAuth with an AsyncBroker under requests: the same broker, asked synchronously."""
    import requests

    sim, broker = stack()
    auth = BrokerAuth("gw", broker=AsyncBroker(broker.socket))
    assert requests.post(sim.api, data=BODY, auth=auth, timeout=10).status_code == 200


def test_the_peer_is_checked_before_anything_is_sent(
    silent_unix: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import os

    import shiftkey_client

    seen: List[Any] = []

    def other_uid(sock: Any) -> int:
        seen.append(sock)
        return os.getuid() + 1

    monkeypatch.setattr(shiftkey_client.broker, "_peer_uid", other_uid)
    # Refused at once (Forbidden), not after the 10 s deadline (that would be BrokerUnavailable).
    with pytest.raises(shiftkey_client.Forbidden, match=r"served by uid \d+, not by this user"):
        asyncio.run(AsyncBroker(silent_unix, timeout=10).token("gw"))
    assert len(seen) == 1 and hasattr(seen[0], "getsockopt")
