"""The broker protocol: a token by name over the Unix socket or the loopback HTTP listener."""

from __future__ import annotations

import http.client
import ipaddress
import json
import os
import socket
import struct
import time
import urllib.parse
from dataclasses import dataclass, field
from typing import Any, Dict, Optional, Tuple, Union

DEFAULT_TIMEOUT = 40.0
"""Seconds a call may take (connect + answer): above the broker's own 30 s wait for a refresh."""

_MAX_REPLY = 1 << 20


class BrokerError(Exception):
    """The broker could not be reached, did not answer, or could not give the token.

    The message names the socket or URL and what went wrong; it never holds a secret or a token.
    """


@dataclass(frozen=True)
class Token:
    """A token as the broker hands it out. Keep `generation` to report a rejection."""

    value: str = field(repr=False)
    generation: int
    expires_in: int


def _peer_uid(sock: socket.socket) -> Optional[int]:
    """The uid of the process serving the connected Unix socket (SO_PEERCRED: pid, uid, gid);
    None where the platform cannot tell."""
    if not hasattr(socket, "SO_PEERCRED"):
        return None
    creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    _pid, uid, _gid = struct.unpack("3i", creds)
    return int(uid)


def _socket_path(explicit: Union[str, "os.PathLike[str]", None]) -> str:
    """The explicit path, else SHIFTKEY_BROKER_SOCKET, else $XDG_RUNTIME_DIR/shiftkey/broker.sock."""
    if explicit is not None:
        return os.fspath(explicit)
    if os.environ.get("SHIFTKEY_BROKER_SOCKET"):
        return os.environ["SHIFTKEY_BROKER_SOCKET"]
    if os.environ.get("XDG_RUNTIME_DIR"):
        return os.path.join(os.environ["XDG_RUNTIME_DIR"], "shiftkey", "broker.sock")
    # No guessing in the shared temp folder: another user could sit at a predictable path.
    raise BrokerError(
        "no shiftkey broker socket is known: pass socket_path, set SHIFTKEY_BROKER_SOCKET "
        "(or XDG_RUNTIME_DIR), or set SHIFTKEY_BROKER_URL and SHIFTKEY_BROKER_SECRET for the "
        "broker's HTTP listener"
    )


def _loopback(url: str) -> Tuple[str, int]:
    """Host and port of a broker URL, which must be plain HTTP on loopback."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme != "http":
        raise ValueError("the broker URL must be http://HOST:PORT (its listener is plain HTTP)")
    if parts.username is not None or parts.password is not None:
        raise ValueError("the broker URL must not hold credentials; pass secret= instead")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise ValueError("the broker URL is its base only, e.g. http://127.0.0.1:8732")
    host = parts.hostname or ""
    try:
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        raise ValueError(
            f"refusing the broker URL host {host!r}: not loopback (127.0.0.0/8, ::1, localhost), "
            "and the client secret would travel in clear"
        )
    return host, parts.port or 80


class Broker:
    """A shiftkey token broker: on its Unix socket (default), or its loopback HTTP listener
    (`url` and this client's `secret`). Each call opens a fresh connection and takes at most
    `timeout` seconds (connect + answer)."""

    def __init__(
        self,
        socket_path: Union[str, "os.PathLike[str]", None] = None,
        *,
        url: Optional[str] = None,
        secret: Optional[str] = None,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> None:
        if not timeout > 0:
            raise ValueError("timeout must be a positive number of seconds")
        self.timeout = float(timeout)
        self.socket_path: Optional[str] = None
        self.url: Optional[str] = None
        self._secret = secret
        if url is None:
            if secret is not None:
                raise ValueError("a secret is for the broker's HTTP listener: pass url= too")
            self.socket_path = _socket_path(socket_path)
            return
        if socket_path is not None:
            raise ValueError("pass the broker's socket path or its URL, not both")
        if not secret:
            raise ValueError("the broker's HTTP listener needs this client's secret (secret=)")
        self._host, self._port = _loopback(url)
        host = f"[{self._host}]" if ":" in self._host else self._host
        self.url = f"http://{host}:{self._port}"

    @classmethod
    def from_env(cls, *, timeout: float = DEFAULT_TIMEOUT) -> "Broker":
        """HTTP when SHIFTKEY_BROKER_URL is set (with SHIFTKEY_BROKER_SECRET), else the socket
        (SHIFTKEY_BROKER_SOCKET, else $XDG_RUNTIME_DIR/shiftkey/broker.sock)."""
        url = os.environ.get("SHIFTKEY_BROKER_URL")
        if not url:
            return cls(timeout=timeout)
        secret = os.environ.get("SHIFTKEY_BROKER_SECRET")
        if not secret:
            raise BrokerError(
                "SHIFTKEY_BROKER_URL is set but SHIFTKEY_BROKER_SECRET is not: the broker's "
                "HTTP listener needs this client's secret"
            )
        return cls(url=url, secret=secret, timeout=timeout)

    def __repr__(self) -> str:
        where = f"url={self.url!r}" if self.url else f"socket_path={self.socket_path!r}"
        return f"Broker({where}, timeout={self.timeout:g})"

    @property
    def _where(self) -> str:
        return self.url or self.socket_path or "?"

    def token(self, name: str) -> Token:
        """The current token of `name`."""
        if self.url is None:
            return self._ask_socket({"op": "get", "name": name})
        return self._ask_http("GET", f"/v1/tokens/{urllib.parse.quote(name, safe='')}", None)

    def rejected(self, name: str, generation: int, served: bool = False) -> Token:
        """A server refused `generation` of `name`: its replacement (the broker refreshes once
        for every client reporting the same generation). Say `served` when a server had
        accepted that generation before: it served, then died (a restart), and the broker then
        replaces even a token it has just replaced (once per minimum interval)."""
        if self.url is None:
            return self._ask_socket(
                {"op": "rejected", "name": name, "generation": generation, "served": served}
            )
        path = f"/v1/tokens/{urllib.parse.quote(name, safe='')}/rejected"
        return self._ask_http("POST", path, {"generation": generation, "served": served})

    def _failed(self, e: OSError) -> BrokerError:
        if isinstance(e, (FileNotFoundError, ConnectionRefusedError)):
            return BrokerError(f"no shiftkey broker is listening on {self._where}")
        if isinstance(e, (socket.timeout, TimeoutError)):
            return BrokerError(
                f"the shiftkey broker on {self._where} did not answer within {self.timeout:g} s"
            )
        return BrokerError(f"cannot talk to the shiftkey broker on {self._where}: {e}")

    def _ask_socket(self, request: Dict[str, Any]) -> Token:
        deadline = time.monotonic() + self.timeout
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
                s.settimeout(self.timeout)
                s.connect(self._where)
                # Trust only a broker running as this user: another user's process at the path
                # could hand out a token of its choosing.
                uid = _peer_uid(s)
                if uid is None:
                    raise BrokerError(
                        f"cannot tell who serves {self._where} (no SO_PEERCRED here); not trusted"
                    )
                if uid != os.getuid():
                    raise BrokerError(
                        f"{self._where} is served by uid {uid}, not by this user "
                        f"(uid {os.getuid()}); not trusted"
                    )
                s.sendall(json.dumps(request).encode() + b"\n")
                reply = bytearray()
                while b"\n" not in reply and len(reply) < _MAX_REPLY:
                    s.settimeout(max(deadline - time.monotonic(), 0.001))
                    chunk = s.recv(65536)
                    if not chunk:
                        break
                    reply += chunk
        except OSError as e:
            raise self._failed(e) from None
        return self._token(bytes(reply).split(b"\n", 1)[0], None)

    def _ask_http(self, method: str, path: str, body: Optional[Dict[str, Any]]) -> Token:
        deadline = time.monotonic() + self.timeout
        headers = {"Authorization": f"Bearer {self._secret}", "Accept": "application/json"}
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        conn = http.client.HTTPConnection(self._host, self._port, timeout=self.timeout)
        try:
            conn.connect()
            if conn.sock is not None:
                conn.sock.settimeout(max(deadline - time.monotonic(), 0.001))
            conn.request(method, path, body=data, headers=headers)
            response = conn.getresponse()
            status, raw = response.status, response.read(_MAX_REPLY)
        except OSError as e:
            raise self._failed(e) from None
        except http.client.HTTPException as e:
            raise BrokerError(
                f"the shiftkey broker on {self._where} sent no valid HTTP answer "
                f"({type(e).__name__})"
            ) from None
        finally:
            conn.close()
        if status == 401:
            raise BrokerError(
                f"the shiftkey broker on {self._where} refused the client secret (HTTP 401)"
            )
        return self._token(raw, status)

    def _token(self, raw: bytes, status: Optional[int]) -> Token:
        """The token in a reply line or body, or the broker's error as a BrokerError."""
        on = f"the shiftkey broker on {self._where}"
        suffix = f" (HTTP {status})" if status is not None else ""
        if not raw.strip():
            raise BrokerError(f"{on} closed the connection without answering{suffix}")
        try:
            reply = json.loads(raw)
        except ValueError:
            reply = None  # not chained: a JSON error holds the whole document, maybe a token
        if not isinstance(reply, dict):
            raise BrokerError(f"{on} sent a reply that is not a JSON object{suffix}")
        if reply.get("ok") is not True:
            error = reply.get("error")
            raise BrokerError(f"{on}: {error if isinstance(error, str) else 'failed'}{suffix}")
        value, generation, expires_in = (reply.get(k) for k in ("token", "generation", "expires_in"))
        if not (
            isinstance(value, str)
            and value
            and type(generation) is int
            and type(expires_in) is int
        ):
            raise BrokerError(f"{on} sent an incomplete reply{suffix}")
        return Token(value, generation, expires_in)


def token(name: str) -> str:
    """The current token of `name` from the broker the environment names (see
    `Broker.from_env`): for anything that takes a bearer token as a string."""
    return Broker.from_env().token(name).value
