"""Client for shiftkey's token broker: a fresh OAuth/Teamcenter token by name, for scripts.

- `Broker` / `Token` / `BrokerError`: the protocol (Unix socket, or loopback HTTP with a secret);
- `BrokerAuth`: `auth=` for `requests` and `httpx`, replaying a request once on a 401;
- `token(name)`: just the token string, from the broker the environment names.

Only the standard library is needed; `BrokerAuth` uses `requests` / `httpx` when installed.
"""

from typing import TYPE_CHECKING, Any

from .broker import Broker, BrokerError, Token, token

if TYPE_CHECKING:
    from .auth import BrokerAuth

__all__ = ["Broker", "BrokerAuth", "BrokerError", "Token", "token"]
__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    # Imported on first use: `import shiftkey_client` does not import requests or httpx.
    if name == "BrokerAuth":
        from .auth import BrokerAuth

        globals()["BrokerAuth"] = BrokerAuth
        return BrokerAuth
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
