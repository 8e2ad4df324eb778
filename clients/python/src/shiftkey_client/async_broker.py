"""`AsyncBroker`: the broker protocol on asyncio streams, for event loops (no worker thread)."""

from __future__ import annotations

import asyncio
import json
from typing import Any, Dict, Optional, Tuple

from .broker import _MAX_REPLY, _Endpoint, Token

__all__ = ["AsyncBroker"]

_MAX_HEAD = 64 * 1024
"""The longest HTTP status line and headers read."""


class _BadHttp(Exception):
    """The answer is not HTTP/1.x as this client reads it."""


class AsyncBroker(_Endpoint):
    """`Broker` for asyncio: the same constructor, `from_env`, and `token` / `rejected` as
    coroutines. Each call opens a fresh connection (`asyncio.open_unix_connection` with the same
    check of the socket's owner, or `asyncio.open_connection`, with TLS for an https:// URL) and
    takes at most `timeout` seconds (connect + answer)."""

    _repr_name = "AsyncBroker"

    async def token(self, name: str) -> Token:
        """The current token of `name`."""
        return await self._ask(self._get_request(name))

    async def rejected(self, name: str, generation: int, served: bool = False) -> Token:
        """A server refused `generation` of `name`: its replacement. See `Broker.rejected`."""
        return await self._ask(self._rejected_request(name, generation, served))

    async def _ask(self, request: Dict[str, Any]) -> Token:
        if self.url is None:
            self._unix_family()  # a clear error where there is no Unix socket
            exchange = self._socket_exchange(request)
        else:
            exchange = self._http_exchange(*self._http_target(request))
        try:
            status, raw = await asyncio.wait_for(exchange, self.timeout)
        except asyncio.TimeoutError:
            raise self._too_slow() from None
        except OSError as e:
            raise self._failed(e) from None
        except asyncio.IncompleteReadError:
            raise self._no_http("the answer ended early") from None
        except (_BadHttp, asyncio.LimitOverrunError, ValueError) as e:
            raise self._no_http(str(e) if isinstance(e, _BadHttp) else "a line too long") from None
        return self._answer(raw, status)

    async def _socket_exchange(self, request: Dict[str, Any]) -> Tuple[Optional[int], bytes]:
        # Looked up here: asyncio has no open_unix_connection where there is no AF_UNIX.
        open_unix = getattr(asyncio, "open_unix_connection")
        reader, writer = await open_unix(self._where, limit=_MAX_REPLY)
        try:
            self._check_peer(writer.get_extra_info("socket"))
            writer.write(json.dumps(request).encode() + b"\n")
            await writer.drain()
            try:
                line: bytes = await reader.readuntil(b"\n")
            except asyncio.IncompleteReadError as e:
                line = e.partial  # closed without a newline: what came, as the sync client
            except asyncio.LimitOverrunError:
                line = await reader.read(_MAX_REPLY)
        finally:
            writer.close()
        return None, line.split(b"\n", 1)[0]

    async def _http_exchange(
        self, method: str, path: str, body: Optional[Dict[str, Any]]
    ) -> Tuple[Optional[int], bytes]:
        data = json.dumps(body).encode() if body is not None else b""
        headers = self._http_headers(data if body is not None else None)
        host = f"[{self._host}]" if ":" in self._host else self._host
        default_port = 443 if self._tls is not None else 80
        headers["Host"] = host if self._port == default_port else f"{host}:{self._port}"
        headers["Content-Length"] = str(len(data))
        headers["Connection"] = "close"
        head = f"{method} {path} HTTP/1.1\r\n" + "".join(
            f"{k}: {v}\r\n" for k, v in headers.items()
        )
        reader, writer = await asyncio.open_connection(
            self._host,
            self._port,
            ssl=self._tls,
            server_hostname=self._host if self._tls is not None else None,
            limit=_MAX_HEAD,
        )
        try:
            writer.write(head.encode("latin-1") + b"\r\n" + data)
            await writer.drain()
            return await _read_response(reader)
        finally:
            writer.close()


async def _read_response(reader: asyncio.StreamReader) -> Tuple[Optional[int], bytes]:
    """The status and body of one HTTP/1.x response (Content-Length, chunked, or to EOF)."""
    status_line = await reader.readline()
    if not status_line:
        raise ConnectionResetError("the connection was closed without an answer")
    parts = status_line.decode("latin-1").split(None, 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/1.") or not parts[1].isdigit():
        raise _BadHttp("not an HTTP/1.x status line")
    status = int(parts[1])
    headers: Dict[str, str] = {}
    size = len(status_line)
    while True:
        line = await reader.readline()
        size += len(line)
        if size > _MAX_HEAD:
            raise _BadHttp("headers too long")
        if not line:
            raise _BadHttp("the headers ended early")
        if line in (b"\r\n", b"\n"):
            break
        name, sep, value = line.decode("latin-1").partition(":")
        if not sep:
            raise _BadHttp("a header line without a colon")
        headers[name.strip().lower()] = value.strip()
    if 100 <= status < 200:
        raise _BadHttp(f"an unexpected interim status {status}")
    if "chunked" in headers.get("transfer-encoding", "").lower():
        body = bytearray()
        while True:
            size_line = await reader.readline()
            try:
                chunk_size = int(size_line.split(b";", 1)[0].strip(), 16)
            except ValueError:
                raise _BadHttp("a bad chunk size") from None
            if chunk_size == 0:
                break
            if len(body) + chunk_size > _MAX_REPLY:
                raise _BadHttp("the answer is too long")
            body += await reader.readexactly(chunk_size)
            await reader.readline()  # the chunk's CRLF
        return status, bytes(body)
    length = headers.get("content-length")
    if length is not None:
        if not length.isdigit() or int(length) > _MAX_REPLY:
            raise _BadHttp("a bad Content-Length")
        return status, await reader.readexactly(int(length))
    body = bytearray()
    while len(body) < _MAX_REPLY:  # no length: the answer ends with the connection
        chunk = await reader.read(_MAX_REPLY - len(body))
        if not chunk:
            break
        body += chunk
    return status, bytes(body)
