"""`Credentials`: a broker token by name, kept until shortly before it expires (google-auth style).

One broker round trip per token generation, not per request: the token is kept until
`expires_in` (counted from when the broker's answer arrived) minus a margin of 10 % of that
lifetime, at least 10 s and at most 60 s (`refresh_margin`). A token with less than the margin
left is not kept at all: every use asks the broker, which has the next one ready before then.
"""

from __future__ import annotations

import asyncio
import threading
import time
import weakref
from datetime import datetime, timedelta, timezone
from typing import Any, MutableMapping, Optional, Union

from .async_broker import AsyncBroker
from .broker import Broker, Token

__all__ = ["Credentials", "refresh_margin"]

MARGIN_MIN = 10.0
"""The least time before expiry at which a kept token is replaced (seconds)."""
MARGIN_MAX = 60.0
"""The most time before expiry at which a kept token is replaced (seconds)."""
MARGIN_SHARE = 0.1
"""The share of the token's lifetime (as the broker answered it) kept as margin."""


def refresh_margin(expires_in: float) -> float:
    """Seconds before expiry at which a token that had `expires_in` seconds left when it
    arrived stops being used: 10 % of `expires_in`, at least 10 s and at most 60 s."""
    return min(MARGIN_MAX, max(MARGIN_MIN, MARGIN_SHARE * expires_in))


_monotonic = time.monotonic  # the clock of the cache (tests move it)


def _utcnow() -> datetime:
    """Naive UTC, as google-auth's `expiry`."""
    return datetime.now(timezone.utc).replace(tzinfo=None)


def _stock(broker: Broker) -> bool:
    """Whether `broker` is a plain `Broker` (its calls can be made on asyncio instead), not a
    subclass with its own `token` / `rejected` (those are called in a worker thread)."""
    kind = type(broker)
    return kind.token is Broker.token and kind.rejected is Broker.rejected


class Credentials:
    """The token `name` from the broker (`Broker` or `AsyncBroker`; default: the one the
    environment names, see `Broker.from_env`), in the style of google-auth's credentials:

    - `token` (the token string, or None before the first `refresh`), `expiry` (when it expires,
      as a naive UTC `datetime`), `generation`, `valid` and `expired`;
    - `refresh(request=None)` asks the broker; `apply(headers)` sets `Authorization: Bearer …`;
      `before_request(request, method, url, headers)` does both, refreshing only when needed;
    - `current()`: the kept token, asking the broker once when it is missing or due;
    - `rejected(token)`: a server answered 401 to `token`: reports it to the broker and keeps the
      replacement; `accepted(token)`: a server accepted it (then a later report says `served`);
    - `arefresh()`, `acurrent()`, `arejected()`: the same as coroutines, on asyncio.

    A token is kept until `refresh_margin(expires_in)` seconds before it expires (see the module
    documentation), so that there is one broker round trip per token generation. Concurrent
    callers share one broker call. Errors are `BrokerError` (`BrokerUnavailable`,
    `TokenRefused`, `Forbidden`). Neither `repr` nor any error holds the token."""

    def __init__(self, name: str, broker: Union[Broker, AsyncBroker, None] = None) -> None:
        self.name = name
        self.broker: Union[Broker, AsyncBroker] = (
            broker if broker is not None else Broker.from_env()
        )
        self._lock = threading.Lock()  # the state below
        self._fetching = threading.Lock()  # one broker call at a time (threads)
        self._async_locks: "weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Lock]"
        self._async_locks = weakref.WeakKeyDictionary()  # the same, per event loop
        self._current: Optional[Token] = None
        self._fresh_until = 0.0  # on _monotonic()
        self._expiry: Optional[datetime] = None
        # The token a server last accepted (its value, not its generation: generations start
        # again at 1 when a broker without a store restarts).
        self._served: Optional[str] = None
        self._sync: Optional[Broker] = None
        self._async: Optional[AsyncBroker] = None

    def __repr__(self) -> str:
        return (
            f"Credentials({self.name!r}, broker={self.broker!r}, generation={self.generation}, "
            f"valid={self.valid})"
        )

    # The google-auth surface.

    @property
    def token(self) -> Optional[str]:
        """The kept token string (None before the first refresh), even when it is due: check
        `valid`, or use `current()` / `before_request`."""
        with self._lock:
            return self._current.value if self._current is not None else None

    @property
    def expiry(self) -> Optional[datetime]:
        """When the kept token expires, as the broker said, as a naive UTC `datetime` (as in
        google-auth); None before the first refresh."""
        with self._lock:
            return self._expiry

    @property
    def generation(self) -> Optional[int]:
        """The broker's generation of the kept token (None before the first refresh)."""
        with self._lock:
            return self._current.generation if self._current is not None else None

    @property
    def expired(self) -> bool:
        """Whether the kept token is within its margin of expiry (or past it): it is not used
        again without asking the broker. False when there is no token yet (as in google-auth)."""
        with self._lock:
            return self._current is not None and _monotonic() >= self._fresh_until

    @property
    def valid(self) -> bool:
        """Whether there is a token and it is not `expired`."""
        with self._lock:
            return self._current is not None and _monotonic() < self._fresh_until

    def refresh(self, request: Any = None) -> None:
        """Asks the broker for the current token and keeps it. `request` (google-auth's
        transport) is not used: the broker is the transport."""
        with self._fetching:
            self._fetch()

    def apply(self, headers: MutableMapping[str, Any], token: Optional[str] = None) -> None:
        """Sets `Authorization: Bearer <token>` in `headers` (the kept token unless `token` is
        given). It does not refresh: see `before_request`."""
        value = token if token is not None else self.token
        if value is None:
            raise ValueError("no token yet: call refresh() or before_request() first")
        headers["Authorization"] = f"Bearer {value}"

    def before_request(
        self, request: Any, method: str, url: str, headers: MutableMapping[str, Any]
    ) -> None:
        """Refreshes when the kept token is missing or due, and applies it to `headers`."""
        self.apply(headers, self.current().value)

    # Tokens in and out.

    def current(self) -> Token:
        """The kept token, or (when there is none or it is due) the broker's current one, kept."""
        kept = self._fresh()
        if kept is not None:
            return kept
        with self._fetching:
            kept = self._fresh()
            return kept if kept is not None else self._fetch()

    def rejected(self, token: Optional[Token] = None) -> Token:
        """A server answered 401 to `token` (default: the kept token): reports it to the broker
        and keeps the replacement, which it returns. When another caller already got a
        replacement, that is returned without asking again. The same generation back means that
        the broker has nothing better (it replaced that token moments ago)."""
        with self._fetching:
            refused = token if token is not None else self._kept()
            if refused is None:
                return self._fetch()
            newer = self._replaced(refused)
            if newer is not None:
                return newer
            served = self._was_served(refused)
            return self._keep(self._sync_broker().rejected(self.name, refused.generation, served))

    def accepted(self, token: Token) -> None:
        """A server accepted `token` (a 2xx answer to a request that carried it). If it is
        refused later, the report says it served, and the broker replaces it even right after a
        replacement (the server restarted)."""
        with self._lock:
            self._served = token.value

    # The same on asyncio.

    async def arefresh(self) -> None:
        """`refresh` as a coroutine."""
        async with self._async_lock():
            await self._afetch()

    async def acurrent(self) -> Token:
        """`current` as a coroutine."""
        kept = self._fresh()
        if kept is not None:
            return kept
        async with self._async_lock():
            kept = self._fresh()
            return kept if kept is not None else await self._afetch()

    async def arejected(self, token: Optional[Token] = None) -> Token:
        """`rejected` as a coroutine."""
        async with self._async_lock():
            refused = token if token is not None else self._kept()
            if refused is None:
                return await self._afetch()
            newer = self._replaced(refused)
            if newer is not None:
                return newer
            served = self._was_served(refused)
            broker = self.broker
            if isinstance(broker, Broker) and not _stock(broker):
                answer = await asyncio.to_thread(
                    broker.rejected, self.name, refused.generation, served
                )
            else:
                answer = await self._async_broker().rejected(self.name, refused.generation, served)
            return self._keep(answer)

    # The state.

    def _kept(self) -> Optional[Token]:
        with self._lock:
            return self._current

    def _fresh(self) -> Optional[Token]:
        with self._lock:
            if self._current is not None and _monotonic() < self._fresh_until:
                return self._current
            return None

    def _replaced(self, refused: Token) -> Optional[Token]:
        """A kept token that replaced `refused` and is still fresh."""
        kept = self._fresh()
        return kept if kept is not None and kept.value != refused.value else None

    def _was_served(self, token: Token) -> bool:
        with self._lock:
            return token.value == self._served

    def _keep(self, token: Token) -> Token:
        arrived = _monotonic()
        with self._lock:
            self._current = token
            self._fresh_until = arrived + token.expires_in - refresh_margin(token.expires_in)
            self._expiry = _utcnow() + timedelta(seconds=token.expires_in)
        return token

    def _fetch(self) -> Token:
        return self._keep(self._sync_broker().token(self.name))

    async def _afetch(self) -> Token:
        broker = self.broker
        if isinstance(broker, Broker) and not _stock(broker):
            return self._keep(await asyncio.to_thread(broker.token, self.name))
        return self._keep(await self._async_broker().token(self.name))

    def _sync_broker(self) -> Broker:
        if isinstance(self.broker, Broker):
            return self.broker
        with self._lock:
            if self._sync is None:
                self._sync = Broker._like(self.broker)
            return self._sync

    def _async_broker(self) -> AsyncBroker:
        if isinstance(self.broker, AsyncBroker):
            return self.broker
        with self._lock:
            if self._async is None:
                self._async = AsyncBroker._like(self.broker)
            return self._async

    def _async_lock(self) -> asyncio.Lock:
        """This event loop's lock (an asyncio lock belongs to one loop)."""
        loop = asyncio.get_running_loop()
        with self._lock:
            lock = self._async_locks.get(loop)
            if lock is None:
                lock = self._async_locks[loop] = asyncio.Lock()
            return lock
