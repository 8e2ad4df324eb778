"""The broker protocol: a token by name over the Unix socket, the loopback HTTP listener, or the
HTTPS listener on another host."""

from __future__ import annotations

import http.client
import ipaddress
import json
import os
import socket
import ssl
import struct
import time
import urllib.parse
from dataclasses import dataclass, field
from typing import Any, Dict, Optional, Tuple, Type, TypeVar, Union

from .errors import BrokerError, BrokerUnavailable, Forbidden, TokenRefused

__all__ = [
    "DEFAULT_TIMEOUT",
    "Broker",
    "BrokerError",
    "BrokerUnavailable",
    "Forbidden",
    "Token",
    "TokenRefused",
    "token",
]

DEFAULT_TIMEOUT = 40.0
"""Seconds a call may take (connect + answer): above the broker's own 30 s wait for a refresh."""

_MAX_REPLY = 1 << 20
"""The longest answer read (a token answer is far shorter)."""

PathLike = Union[str, "os.PathLike[str]"]

_B = TypeVar("_B", bound="_Endpoint")


@dataclass(frozen=True)
class Token:
    """A token as the broker hands it out. Keep `generation` to report a rejection.

    `expires_in` is the seconds the token had left when the broker answered."""

    value: str = field(repr=False)
    generation: int
    expires_in: int


def _peer_uid(sock: Any) -> Optional[int]:
    """The uid of the process serving the connected Unix socket (SO_PEERCRED: pid, uid, gid);
    None where the platform cannot tell. `sock` is a `socket.socket`, or the transport socket of
    an asyncio stream (both have `getsockopt`)."""
    peercred = getattr(socket, "SO_PEERCRED", None)
    if peercred is None:
        return None
    creds = sock.getsockopt(socket.SOL_SOCKET, peercred, struct.calcsize("3i"))
    _pid, uid, _gid = struct.unpack("3i", creds)
    return int(uid)


def _socket_path(explicit: Optional[PathLike]) -> str:
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
        "broker's HTTP(S) listener"
    )


def _is_loopback(host: str) -> bool:
    try:
        return host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _broker_url(url: str) -> Tuple[bool, str, int]:
    """(TLS, host, port) of a broker URL: `https://` on any host, or `http://` on loopback only
    (the client secret would travel in clear)."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https"):
        raise ValueError(
            "the broker URL must be https://HOST:PORT, or http://HOST:PORT on loopback"
        )
    if parts.username is not None or parts.password is not None:
        raise ValueError("the broker URL must not hold credentials; pass secret= instead")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise ValueError("the broker URL is its base only, e.g. https://broker.example:8733")
    host = parts.hostname or ""
    if not host:
        raise ValueError("the broker URL has no host")
    try:
        port = parts.port
    except ValueError:
        raise ValueError("the broker URL has an invalid port") from None
    tls = parts.scheme == "https"
    if not tls and not _is_loopback(host):
        raise ValueError(
            f"refusing the broker URL host {host!r}: not loopback (127.0.0.0/8, ::1, localhost), "
            "and the client secret would travel in clear; use the broker's https:// listener"
        )
    return tls, host, port or (443 if tls else 80)


def _tls_context(ca_file: Optional[str]) -> ssl.SSLContext:
    """Verifies the broker's certificate and host name: against `ca_file` (PEM), else the
    system's trust store."""
    try:
        return ssl.create_default_context(cafile=ca_file)
    except (OSError, ssl.SSLError) as e:
        reason = getattr(e, "strerror", None) or getattr(e, "reason", None) or type(e).__name__
        raise ValueError(f"cannot load the CA file {ca_file!r}: {reason}") from None


def _json_object(raw: bytes) -> Optional[Dict[str, Any]]:
    try:
        reply = json.loads(raw)
    except ValueError:
        return None  # not chained: a JSON error holds the whole document, maybe a token
    return reply if isinstance(reply, dict) else None


def _refusal(status: Optional[int], message: Optional[str], is_json: bool) -> Type[BrokerError]:
    """The error class of a broker's refusal (a reply with `"ok": false`, or an HTTP status
    other than 2xx). The broker's HTTP statuses: 401 (no or a wrong client secret), 403 (a token
    outside the client's scope, or a user the listener does not serve), 421 (a host name it does
    not answer to), 404 (no token of that name), 503 (no token can be had: the identity provider
    refused or could not be reached), 400 (a request it does not understand)."""
    if status is None or 200 <= status < 300:  # the socket: the error text says what
        if message is not None and message.startswith("bad request"):
            return BrokerError
        if message == "the answer could not be written":
            return BrokerUnavailable
        return TokenRefused
    if status in (401, 403, 421):
        return Forbidden
    if status in (404, 503) and is_json:
        return TokenRefused
    if status == 400 and is_json:
        return BrokerError
    return BrokerUnavailable  # a gateway's 502, a 408, or not the broker at all


class _Endpoint:
    """Where the broker is and how to reach it; shared by `Broker` and `AsyncBroker`."""

    socket_path: Optional[str]
    url: Optional[str]
    ca_file: Optional[str]
    timeout: float
    _repr_name = "Broker"  # subclasses (a test's fake) show as what they stand for

    def __init__(
        self,
        socket_path: Optional[PathLike] = None,
        *,
        url: Optional[str] = None,
        secret: Optional[str] = None,
        timeout: float = DEFAULT_TIMEOUT,
        ca_file: Optional[PathLike] = None,
    ) -> None:
        if not timeout > 0:
            raise ValueError("timeout must be a positive number of seconds")
        self.timeout = float(timeout)
        self.socket_path = None
        self.url = None
        self.ca_file = None
        self._secret = secret
        self._host = ""
        self._port = 0
        self._tls: Optional[ssl.SSLContext] = None
        if url is None:
            if secret is not None:
                raise ValueError("a secret is for the broker's HTTP(S) listener: pass url= too")
            if ca_file is not None:
                raise ValueError("ca_file is for the broker's https:// listener: pass url= too")
            self.socket_path = _socket_path(socket_path)
            return
        if socket_path is not None:
            raise ValueError("pass the broker's socket path or its URL, not both")
        if not secret:
            raise ValueError("the broker's HTTP(S) listener needs this client's secret (secret=)")
        tls, self._host, self._port = _broker_url(url)
        if tls:
            self.ca_file = os.fspath(ca_file) if ca_file is not None else None
            self._tls = _tls_context(self.ca_file)
        elif ca_file is not None:
            raise ValueError("ca_file is for an https:// broker URL")
        host = f"[{self._host}]" if ":" in self._host else self._host
        self.url = f"{'https' if tls else 'http'}://{host}:{self._port}"

    @classmethod
    def from_env(cls: Type[_B], *, timeout: float = DEFAULT_TIMEOUT) -> _B:
        """HTTP(S) when SHIFTKEY_BROKER_URL is set (with SHIFTKEY_BROKER_SECRET, and for an
        https:// URL SHIFTKEY_BROKER_CA_FILE when set), else the socket (SHIFTKEY_BROKER_SOCKET,
        else $XDG_RUNTIME_DIR/shiftkey/broker.sock)."""
        url = os.environ.get("SHIFTKEY_BROKER_URL")
        if not url:
            return cls(timeout=timeout)
        secret = os.environ.get("SHIFTKEY_BROKER_SECRET")
        if not secret:
            raise BrokerError(
                "SHIFTKEY_BROKER_URL is set but SHIFTKEY_BROKER_SECRET is not: the broker's "
                "HTTP(S) listener needs this client's secret"
            )
        ca_file = os.environ.get("SHIFTKEY_BROKER_CA_FILE") or None
        if urllib.parse.urlsplit(url).scheme != "https":
            ca_file = None  # only an https:// listener has a certificate to verify
        return cls(url=url, secret=secret, timeout=timeout, ca_file=ca_file)

    @classmethod
    def _like(cls: Type[_B], other: "_Endpoint") -> _B:
        """A client of `cls` for the same broker as `other` (a `Broker` for an `AsyncBroker`, or
        the other way round), sharing its settings."""
        twin = cls.__new__(cls)
        for attr in ("timeout", "socket_path", "url", "ca_file", "_secret", "_host", "_port"):
            setattr(twin, attr, getattr(other, attr))
        twin._tls = other._tls
        return twin

    def __repr__(self) -> str:
        where = f"url={self.url!r}" if self.url else f"socket_path={self.socket_path!r}"
        if self.ca_file is not None:
            where += f", ca_file={self.ca_file!r}"
        return f"{self._repr_name}({where}, timeout={self.timeout:g})"

    @property
    def _where(self) -> str:
        return self.url or self.socket_path or "?"

    # What both clients send.

    @staticmethod
    def _get_request(name: str) -> Dict[str, Any]:
        return {"op": "get", "name": name}

    @staticmethod
    def _rejected_request(name: str, generation: int, served: bool) -> Dict[str, Any]:
        return {"op": "rejected", "name": name, "generation": generation, "served": served}

    @staticmethod
    def _http_target(request: Dict[str, Any]) -> Tuple[str, str, Optional[Dict[str, Any]]]:
        """The HTTP method, path and JSON body of a socket request."""
        path = f"/v1/tokens/{urllib.parse.quote(request['name'], safe='')}"
        if request["op"] == "get":
            return "GET", path, None
        return "POST", f"{path}/rejected", {
            "generation": request["generation"],
            "served": request["served"],
        }

    def _http_headers(self, body: Optional[bytes]) -> Dict[str, str]:
        headers = {"Authorization": f"Bearer {self._secret}", "Accept": "application/json"}
        if body is not None:
            headers["Content-Type"] = "application/json"
        return headers

    # The Unix socket's checks.

    def _unix_family(self) -> int:
        """AF_UNIX, where the platform has it and can tell who serves a socket."""
        family = getattr(socket, "AF_UNIX", None)
        if family is None:
            raise BrokerError(
                f"cannot use the shiftkey broker socket {self._where} on this system (the socket "
                "is for Linux): use the broker's https:// listener (url=, SHIFTKEY_BROKER_URL)"
            )
        return int(family)

    def _check_peer(self, sock: Any) -> None:
        """Trust only a broker running as this user: another user's process at the path could
        hand out a token of its choosing."""
        uid = _peer_uid(sock)
        getuid = getattr(os, "getuid", None)
        if uid is None or getuid is None:
            raise Forbidden(
                f"cannot tell who serves {self._where} (no SO_PEERCRED here); not trusted"
            )
        mine = int(getuid())
        if uid != mine:
            raise Forbidden(
                f"{self._where} is served by uid {uid}, not by this user (uid {mine}); "
                "not trusted"
            )

    # What went wrong.

    def _failed(self, e: OSError) -> BrokerError:
        if isinstance(e, ssl.SSLCertVerificationError):
            return BrokerUnavailable(
                f"the TLS certificate of the shiftkey broker on {self._where} cannot be "
                f"verified: {e.verify_message or e.reason}"
                + (f" (CA file {self.ca_file})" if self.ca_file else " (the system's CAs)")
            )
        if isinstance(e, ssl.SSLError):
            return BrokerUnavailable(
                f"TLS with the shiftkey broker on {self._where} failed: {e.reason or e}"
            )
        if isinstance(e, (FileNotFoundError, ConnectionRefusedError)):
            return BrokerUnavailable(f"no shiftkey broker is listening on {self._where}")
        if isinstance(e, (socket.timeout, TimeoutError)):
            return self._too_slow()
        return BrokerUnavailable(f"cannot talk to the shiftkey broker on {self._where}: {e}")

    def _too_slow(self) -> BrokerUnavailable:
        return BrokerUnavailable(
            f"the shiftkey broker on {self._where} did not answer within {self.timeout:g} s"
        )

    def _no_http(self, what: str) -> BrokerUnavailable:
        return BrokerUnavailable(
            f"the shiftkey broker on {self._where} sent no valid HTTP answer ({what})"
        )

    def _plain(self, raw: bytes) -> Optional[str]:
        """The first line of a plain-text refusal, as the broker's message (never one that
        echoes the secret)."""
        lines = raw.decode("utf-8", "replace").strip().splitlines()
        if not lines:
            return None
        line = "".join(c for c in lines[0] if c.isprintable())[:200].strip()
        if not line or (self._secret and self._secret in line):
            return None
        return line

    def _answer(self, raw: bytes, status: Optional[int]) -> Token:
        """The token in a reply line or body; the broker's refusal or a bad reply as the
        matching `BrokerError`."""
        on = f"the shiftkey broker on {self._where}"
        suffix = f" (HTTP {status})" if status is not None else ""
        reply = _json_object(raw) if raw.strip() else None
        refused = status is not None and not 200 <= status < 300
        if refused or (reply is not None and reply.get("ok") is not True):
            if reply is not None:
                error = reply.get("error")
                message = error if isinstance(error, str) else None
            else:
                message = self._plain(raw)
            cls = _refusal(status, message, reply is not None)
            if status == 401:
                text = f"{on} refused the client secret (HTTP 401)"
            elif message is not None:
                text = f"{on}: {message}{suffix}"
            elif reply is not None or not raw.strip():
                text = f"{on}: failed{suffix}"
            else:
                text = f"{on} sent a reply that is not a JSON object{suffix}"
            raise cls(text, status=status, message=message)
        if not raw.strip():
            raise BrokerUnavailable(
                f"{on} closed the connection without answering{suffix}", status=status
            )
        if reply is None:
            raise BrokerUnavailable(
                f"{on} sent a reply that is not a JSON object{suffix}", status=status
            )
        value, generation, expires_in = (
            reply.get(k) for k in ("token", "generation", "expires_in")
        )
        if not (
            isinstance(value, str)
            and value
            and type(generation) is int
            and type(expires_in) is int
        ):
            raise BrokerUnavailable(f"{on} sent an incomplete reply{suffix}", status=status)
        return Token(value, generation, expires_in)


class Broker(_Endpoint):
    """A shiftkey token broker: on its Unix socket (the default; Linux), its loopback HTTP
    listener (`url="http://127.0.0.1:PORT"` and this client's `secret`), or its HTTPS listener on
    any host (`url="https://HOST:PORT"`, `secret`, and `ca_file`, a PEM bundle of the CA that
    signed the broker's certificate; default: the system's trust store). Each call opens a fresh
    connection and takes at most `timeout` seconds (connect + answer).

    Errors are `BrokerError`: `BrokerUnavailable`, `TokenRefused` or `Forbidden`. A URL that is
    neither https:// nor http:// on loopback raises `ValueError` here, at once."""

    def token(self, name: str) -> Token:
        """The current token of `name`."""
        return self._ask(self._get_request(name))

    def rejected(self, name: str, generation: int, served: bool = False) -> Token:
        """A server refused `generation` of `name`: its replacement (the broker refreshes once
        for every client reporting the same generation). Say `served` when a server had
        accepted that generation before: it served, then died (a restart), and the broker then
        replaces even a token it has just replaced (once per minimum interval)."""
        return self._ask(self._rejected_request(name, generation, served))

    def _ask(self, request: Dict[str, Any]) -> Token:
        if self.url is None:
            return self._ask_socket(request)
        return self._ask_http(*self._http_target(request))

    def _ask_socket(self, request: Dict[str, Any]) -> Token:
        family = self._unix_family()
        deadline = time.monotonic() + self.timeout
        try:
            with socket.socket(family, socket.SOCK_STREAM) as s:
                s.settimeout(self.timeout)
                s.connect(self._where)
                self._check_peer(s)
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
        return self._answer(bytes(reply).split(b"\n", 1)[0], None)

    def _ask_http(self, method: str, path: str, body: Optional[Dict[str, Any]]) -> Token:
        deadline = time.monotonic() + self.timeout
        data = json.dumps(body).encode() if body is not None else None
        headers = self._http_headers(data)
        conn: http.client.HTTPConnection
        if self._tls is not None:
            conn = http.client.HTTPSConnection(
                self._host, self._port, timeout=self.timeout, context=self._tls
            )
        else:
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
            raise self._no_http(type(e).__name__) from None
        finally:
            conn.close()
        return self._answer(raw, status)


def token(name: str) -> str:
    """The current token of `name` from the broker the environment names (see
    `Broker.from_env`): for anything that takes a bearer token as a string. Each call asks the
    broker; to keep a token until shortly before it expires, use `Credentials`."""
    return Broker.from_env().token(name).value
