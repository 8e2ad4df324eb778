"""`BrokerAuth`: the broker's token on every request, and one replay with its replacement on a 401.

One class for both libraries: `requests` calls it (`auth=` / `session.auth`), `httpx` runs its
`auth_flow` (`httpx.Client(auth=...)` and `httpx.AsyncClient(auth=...)`). Each library is used
only if installed.
"""

from __future__ import annotations

import asyncio
import functools
import threading
from typing import TYPE_CHECKING, Any, AsyncGenerator, Generator, Mapping, Optional

from .broker import Broker, Token

if TYPE_CHECKING:
    import httpx
    import requests

try:
    from requests.auth import AuthBase as _RequestsAuth
except ImportError:  # requests is optional

    class _RequestsAuth:  # type: ignore[no-redef]
        pass


try:
    from httpx import Auth as _HttpxAuth
except ImportError:  # httpx is optional

    class _HttpxAuth:  # type: ignore[no-redef]
        pass


class BrokerAuth(_RequestsAuth, _HttpxAuth):
    """Sets `Authorization: Bearer <token of name>` from the broker on each request. On a 401 it
    reports the token's generation and resends the request once with the replacement (only when
    the body can be sent again: not a generator or a file stream); a second 401 goes to the
    caller as it is. `healed` counts the 401s that the resend turned into another answer.

    A report says whether a server had accepted the refused generation before (a 2xx answer to
    a request that carried it): a token that served and then died (a server restart)
    is replaced even right after a replacement, which the broker otherwise refuses.

    With `httpx.AsyncClient` the broker calls run in a worker thread."""

    def __init__(self, name: str, broker: Optional[Broker] = None) -> None:
        self.name = name
        self.broker = broker if broker is not None else Broker.from_env()
        self.healed = 0
        self._lock = threading.Lock()
        # The token a server last accepted (its value, not its generation: generations start
        # again at 1 when a broker without a store restarts).
        self._served: Optional[str] = None

    def __repr__(self) -> str:
        return f"BrokerAuth({self.name!r}, broker={self.broker!r}, healed={self.healed})"

    def _count_healed(self) -> None:
        with self._lock:
            self.healed += 1

    def _answered(self, status: int, headers: Mapping[str, str], token: Token) -> None:
        """Notes a server's answer: a 2xx to a request that carried `token` says it served (not
        one after a redirect to a host that never saw it)."""
        if 200 <= status < 300 and headers.get("Authorization") == f"Bearer {token.value}":
            with self._lock:
                self._served = token.value

    def _was_served(self, token: Token) -> bool:
        with self._lock:
            return token.value == self._served

    def _report(self, token: Token) -> Token:
        """Reports `token` refused; its replacement."""
        return self.broker.rejected(self.name, token.generation, self._was_served(token))

    async def _areport(self, token: Token) -> Token:
        served = self._was_served(token)
        return await asyncio.to_thread(self.broker.rejected, self.name, token.generation, served)

    # requests

    def __call__(self, r: "requests.PreparedRequest") -> "requests.PreparedRequest":
        token = self.broker.token(self.name)
        r.headers["Authorization"] = f"Bearer {token.value}"
        hook = functools.partial(self._on_response, token)
        r.register_hook("response", hook)  # type: ignore[no-untyped-call]
        return r

    def _on_response(
        self, token: Token, r: "requests.Response", **kwargs: Any
    ) -> "requests.Response":
        if not _refused(r.status_code, r.request.headers, token):
            self._answered(r.status_code, r.request.headers, token)
            return r
        replacement = self._report(token)
        replayable = r.request.body is None or isinstance(r.request.body, (bytes, str))
        if replacement.generation == token.generation or not replayable:
            return r  # nothing better to send (or nothing to send it with): the 401 as it is
        from requests.cookies import extract_cookies_to_jar

        r.content  # read the 401 to release its connection  # noqa: B018
        r.close()
        retry = r.request.copy()
        jar = retry._cookies  # type: ignore[attr-defined]
        extract_cookies_to_jar(jar, r.request, r.raw)  # type: ignore[no-untyped-call]
        retry.prepare_cookies(jar)
        retry.headers["Authorization"] = f"Bearer {replacement.value}"
        again: requests.Response = r.connection.send(retry, **kwargs)
        again.history.append(r)
        again.request = retry
        if again.status_code != 401:
            self._count_healed()
            self._answered(again.status_code, again.request.headers, replacement)
        return again

    # httpx

    def auth_flow(
        self, request: "httpx.Request"
    ) -> Generator["httpx.Request", "httpx.Response", None]:
        token = self.broker.token(self.name)
        request.headers["Authorization"] = f"Bearer {token.value}"
        response = yield request
        if not _refused(response.status_code, response.request.headers, token):
            self._answered(response.status_code, response.request.headers, token)
            return
        replacement = self._report(token)
        if replacement.generation == token.generation or not _replayable(request):
            return
        request.headers["Authorization"] = f"Bearer {replacement.value}"
        response = yield request
        if response.status_code != 401:
            self._count_healed()
            self._answered(response.status_code, response.request.headers, replacement)

    async def async_auth_flow(
        self, request: "httpx.Request"
    ) -> AsyncGenerator["httpx.Request", "httpx.Response"]:
        token = await asyncio.to_thread(self.broker.token, self.name)
        request.headers["Authorization"] = f"Bearer {token.value}"
        response = yield request
        if not _refused(response.status_code, response.request.headers, token):
            self._answered(response.status_code, response.request.headers, token)
            return
        replacement = await self._areport(token)
        if replacement.generation == token.generation or not _replayable(request):
            return
        request.headers["Authorization"] = f"Bearer {replacement.value}"
        response = yield request
        if response.status_code != 401:
            self._count_healed()
            self._answered(response.status_code, response.request.headers, replacement)


def _refused(status: int, headers: Mapping[str, str], token: Token) -> bool:
    """A 401 to a request that carried `token`: not one after a redirect to another host, where
    the library dropped the token (that host must not get the replacement either)."""
    return status == 401 and headers.get("Authorization") == f"Bearer {token.value}"


def _replayable(request: "httpx.Request") -> bool:
    """Whether httpx holds the body in memory (a streamed body cannot be sent twice)."""
    import httpx

    try:
        request.content
    except httpx.RequestNotRead:
        return False
    return True
