"""Client for shiftkey's token broker: a fresh OAuth/Teamcenter token by name, for scripts.

- `Broker` / `AsyncBroker` / `Token`: the protocol (the Unix socket on Linux, loopback HTTP, or
  HTTPS on any host, with this client's secret), blocking or on asyncio;
- `Credentials`: a token kept until shortly before it expires (google-auth style);
- `BrokerAuth`: `auth=` for `requests` and `httpx`, replaying a request once on a 401;
- `token(name)`: just the token string, from the broker the environment names;
- `BrokerError`, with `BrokerUnavailable`, `TokenRefused` and `Forbidden`: what went wrong.

Only the standard library is needed; `BrokerAuth` uses `requests` / `httpx` when installed.
"""

from typing import TYPE_CHECKING, Any

from .async_broker import AsyncBroker
from .broker import Broker, Token, token
from .credentials import Credentials
from .errors import BrokerError, BrokerUnavailable, Forbidden, TokenRefused

if TYPE_CHECKING:
    from .auth import BrokerAuth

__all__ = [
    "AsyncBroker",
    "Broker",
    "BrokerAuth",
    "BrokerError",
    "BrokerUnavailable",
    "Credentials",
    "Forbidden",
    "Token",
    "TokenRefused",
    "token",
]
__version__ = "0.2.0"


def __getattr__(name: str) -> Any:
    # Imported on first use: `import shiftkey_client` does not import requests or httpx.
    if name == "BrokerAuth":
        from .auth import BrokerAuth

        globals()["BrokerAuth"] = BrokerAuth
        return BrokerAuth
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
