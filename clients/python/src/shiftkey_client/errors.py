"""What can go wrong when asking the broker, as a small hierarchy under `BrokerError`.

- `BrokerUnavailable`: no broker could be reached, or it did not answer in time, or its answer
  was not one (garbled, incomplete, a TLS certificate that cannot be verified). Trying again
  later may help.
- `TokenRefused`: the broker answered that it cannot give the token (no token of that name, or
  the identity provider refused or could not be reached: the broker's message says which).
- `Forbidden`: the broker refused this client (its HTTP listener refused the client secret, or
  the token is outside the client's scope), or the Unix socket is served by another user and
  the client refused the broker.

Every error carries `status` (the broker's HTTP status; None on the Unix socket or when no
answer came) and `message` (the broker's own message, when it sent one). Neither the text,
`message` nor `repr` ever holds the client secret or a token.
"""

from __future__ import annotations

from typing import Any, Optional, Tuple


class BrokerError(Exception):
    """The broker could not be reached, did not answer, or could not give the token.

    The text names the socket or URL and what went wrong. `status` is the broker's HTTP status
    (None on the Unix socket, or when no answer came); `message` is the broker's own message,
    when it sent one. Neither holds a secret or a token.
    """

    def __init__(
        self, text: str, *, status: Optional[int] = None, message: Optional[str] = None
    ) -> None:
        super().__init__(text)
        self.status = status
        self.message = message

    def __reduce__(self) -> Tuple[Any, ...]:
        # Keeps status and message through pickling (multiprocessing, concurrent.futures).
        return (_rebuild, (type(self), str(self), self.status, self.message))


class BrokerUnavailable(BrokerError):
    """No broker could be reached, or it did not answer within the timeout, or its answer was
    not a valid one (garbled, incomplete), or its TLS certificate could not be verified."""


class TokenRefused(BrokerError):
    """The broker answered that it cannot give the token: there is no token of that name (HTTP
    404), or the broker could not get one (HTTP 503: the identity provider refused the
    credential or could not be reached; `message` says which)."""


class Forbidden(BrokerError):
    """The broker refused this client: its HTTP listener refused the client secret (HTTP 401),
    the token is outside the client's scope or the listener does not serve this user (403), or
    it does not answer to the host name used (421). On the Unix socket: the socket is served by
    another user (or its owner cannot be told), so the client did not trust it."""


def _rebuild(
    cls: "type[BrokerError]", text: str, status: Optional[int], message: Optional[str]
) -> BrokerError:
    return cls(text, status=status, message=message)
