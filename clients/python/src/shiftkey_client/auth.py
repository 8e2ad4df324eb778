"""`BrokerAuth`: the broker's token on every request, and one replay with its replacement on a 401.

One class for both libraries: `requests` calls it (`auth=` / `session.auth`), `httpx` runs its
`auth_flow` (`httpx.Client(auth=...)`) or `async_auth_flow` (`httpx.AsyncClient(auth=...)`).
Each library is used only if installed.

A broker error raised while a request is sent is also the library's own error: under requests
a `requests.RequestException`, under httpx an `httpx.HTTPError` (classes such as
`RequestsBrokerUnavailable(BrokerUnavailable, requests.RequestException)`, made here), so that
`except requests.RequestException` and `except shiftkey_client.BrokerUnavailable` both catch a
broker outage during `session.get(...)`.
"""

from __future__ import annotations

import functools
import threading
from typing import (
    TYPE_CHECKING,
    Any,
    AsyncGenerator,
    Dict,
    Generator,
    Mapping,
    NoReturn,
    Optional,
    Union,
)

from .async_broker import AsyncBroker
from .broker import Broker, Token
from .credentials import Credentials
from .errors import BrokerError, BrokerUnavailable, Forbidden, TokenRefused

if TYPE_CHECKING:
    import httpx
    import requests

__all__ = ["BrokerAuth"]

_requests_error: Optional[type]
_httpx_error: Optional[type]

try:
    from requests.auth import AuthBase as _RequestsAuth
    from requests.exceptions import RequestException

    _requests_error = RequestException
except ImportError:  # requests is optional

    class _RequestsAuth:  # type: ignore[no-redef]
        pass

    _requests_error = None

try:
    from httpx import Auth as _HttpxAuth
    from httpx import HTTPError

    _httpx_error = HTTPError
except ImportError:  # httpx is optional

    class _HttpxAuth:  # type: ignore[no-redef]
        pass

    _httpx_error = None

_FAMILY = (BrokerError, BrokerUnavailable, TokenRefused, Forbidden)


def _adapters(library_error: Optional[type], prefix: str) -> Dict[type, type]:
    """`prefix + name` for each broker error class: a subclass of it and of `library_error`."""
    if library_error is None:
        return {}
    made: Dict[type, type] = {}
    for cls in _FAMILY:
        name = prefix + cls.__name__
        made[cls] = type(
            name,
            (cls, library_error),
            {
                "__module__": __name__,
                "__qualname__": name,
                "__doc__": f"`{cls.__name__}` raised while {prefix.lower()} sent a request: also "
                f"`{library_error.__module__}.{library_error.__qualname__}`.",
            },
        )
        globals()[name] = made[cls]  # importable (and picklable) by name
    return made


_FOR_REQUESTS = _adapters(_requests_error, "Requests")
_FOR_HTTPX = _adapters(_httpx_error, "Httpx")


def _reraise(e: BrokerError, family: Mapping[type, type], request: Any) -> NoReturn:
    """Raises `e` as the library's kind of the same broker error (with the request attached)."""
    adapted = next((family[c] for c in type(e).__mro__ if c in family), None)
    if adapted is None or isinstance(e, tuple(family.values())):
        raise e
    again: BrokerError = adapted(str(e), status=e.status, message=e.message)
    setattr(again, "request", request)  # both libraries' errors have it
    raise again.with_traceback(e.__traceback__) from None


class BrokerAuth(_RequestsAuth, _HttpxAuth):
    """Sets `Authorization: Bearer <token of name>` from the broker on each request. On a 401 it
    reports the token's generation and resends the request once with the replacement (only when
    the body can be sent again: not a generator or a file stream); a second 401 goes to the
    caller as it is. `healed` counts the 401s that the resend turned into another answer.

    The token is kept in `credentials` (`Credentials`) until shortly before it expires: one
    broker round trip per token generation, not per request. Use one `BrokerAuth` for many
    requests (a `requests.Session`, an `httpx.Client`). `name` may also be a `Credentials`,
    shared by several `BrokerAuth`.

    A report says whether a server had accepted the refused generation before (a 2xx answer to
    a request that carried it): a token that served and then died (a server restart)
    is replaced even right after a replacement, which the broker otherwise refuses.

    With `httpx.AsyncClient` the broker is asked on asyncio (`AsyncBroker`; a `Broker` subclass
    with its own `token` / `rejected` is called in a worker thread)."""

    def __init__(
        self,
        name: Union[str, Credentials],
        broker: Union[Broker, AsyncBroker, None] = None,
    ) -> None:
        if isinstance(name, Credentials):
            if broker is not None:
                raise ValueError("pass a token name and a broker, or Credentials, not both")
            self.credentials = name
        else:
            self.credentials = Credentials(name, broker)
        self.name = self.credentials.name
        self.broker = self.credentials.broker
        self.healed = 0
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"BrokerAuth({self.name!r}, broker={self.broker!r}, healed={self.healed})"

    def _count_healed(self) -> None:
        with self._lock:
            self.healed += 1

    def _answered(self, status: int, headers: Mapping[str, Any], token: Token) -> None:
        """Notes a server's answer: a 2xx to a request that carried `token` says it served (not
        one after a redirect to a host that never saw it)."""
        if 200 <= status < 300 and headers.get("Authorization") == f"Bearer {token.value}":
            self.credentials.accepted(token)

    # requests

    def __call__(self, r: "requests.PreparedRequest") -> "requests.PreparedRequest":
        try:
            token = self.credentials.current()
        except BrokerError as e:
            _reraise(e, _FOR_REQUESTS, r)
        r.headers["Authorization"] = f"Bearer {token.value}"
        r.register_hook("response", functools.partial(self._on_response, token))
        return r

    def _on_response(
        self, token: Token, r: "requests.Response", **kwargs: Any
    ) -> "requests.Response":
        if not _refused(r.status_code, r.request.headers, token):
            self._answered(r.status_code, r.request.headers, token)
            return r
        try:
            replacement = self.credentials.rejected(token)
        except BrokerError as e:
            _reraise(e, _FOR_REQUESTS, r.request)
        replayable = r.request.body is None or isinstance(r.request.body, (bytes, str))
        if replacement.generation == token.generation or not replayable:
            return r  # nothing better to send (or nothing to send it with): the 401 as it is
        from requests.cookies import extract_cookies_to_jar

        r.content  # read the 401 to release its connection  # noqa: B018
        r.close()
        retry = r.request.copy()
        jar: Any = getattr(retry, "_cookies")
        extract_cookies_to_jar(jar, r.request, r.raw)
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
        try:
            token = self.credentials.current()
        except BrokerError as e:
            _reraise(e, _FOR_HTTPX, request)
        request.headers["Authorization"] = f"Bearer {token.value}"
        response = yield request
        if not _refused(response.status_code, response.request.headers, token):
            self._answered(response.status_code, response.request.headers, token)
            return
        try:
            replacement = self.credentials.rejected(token)
        except BrokerError as e:
            _reraise(e, _FOR_HTTPX, request)
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
        try:
            token = await self.credentials.acurrent()
        except BrokerError as e:
            _reraise(e, _FOR_HTTPX, request)
        request.headers["Authorization"] = f"Bearer {token.value}"
        response = yield request
        if not _refused(response.status_code, response.request.headers, token):
            self._answered(response.status_code, response.request.headers, token)
            return
        try:
            replacement = await self.credentials.arejected(token)
        except BrokerError as e:
            _reraise(e, _FOR_HTTPX, request)
        if replacement.generation == token.generation or not _replayable(request):
            return
        request.headers["Authorization"] = f"Bearer {replacement.value}"
        response = yield request
        if response.status_code != 401:
            self._count_healed()
            self._answered(response.status_code, response.request.headers, replacement)


def _refused(status: int, headers: Mapping[str, Any], token: Token) -> bool:
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
