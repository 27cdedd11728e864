"""The network under the `openai` SDK's client: an httpx2 transport backed by aiohttp.

The SDK builds every request (base URL, auth, headers, query, timeouts) and maps every failure to
its own error types; this transport only moves bytes. It replaces httpx2's default pure-Python
connection pool, which the benchmark profile showed as the largest single cost of a request
(issue 3: scanning every pooled connection per request, an anyio socket wrapper per read);
aiohttp's pool and HTTP parser are in C.

aiohttp failures are re-raised as the httpx2 exceptions the SDK expects (connect errors and
timeouts become `APIConnectionError`/`APITimeoutError` there). Responses are streamed: closing one
before its end closes the connection, so an abandoned stream stops the upstream request at once.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import aiohttp
import httpx2

_READ_SIZE = 64 * 1024


class AiohttpTransport(httpx2.AsyncBaseTransport):
    """One aiohttp session (one connection pool) per upstream client, made on first use."""

    def __init__(self, *, max_connections: int, keepalive_expiry: float) -> None:
        self._max_connections = max_connections
        self._keepalive_expiry = keepalive_expiry
        self._session: aiohttp.ClientSession | None = None

    def _open_session(self) -> aiohttp.ClientSession:
        connector = aiohttp.TCPConnector(
            limit=self._max_connections, limit_per_host=0, keepalive_timeout=self._keepalive_expiry, ttl_dns_cache=60
        )
        # auto_decompress off: httpx2 decodes Content-Encoding itself from the headers it is given.
        self._session = aiohttp.ClientSession(connector=connector, auto_decompress=False, skip_auto_headers=("User-Agent",))
        return self._session

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        session = self._session or self._open_session()
        timeouts = request.extensions.get("timeout") or {}
        timeout = aiohttp.ClientTimeout(
            total=None,
            sock_connect=timeouts.get("connect"),
            sock_read=timeouts.get("read"),
        )
        body = await request.aread()
        try:
            response = await session.request(
                request.method,
                str(request.url),
                headers=request.headers.multi_items(),
                data=body or None,
                timeout=timeout,
                allow_redirects=False,
                compress=False,
            )
        except BaseException as exc:
            raise _httpx_error(exc, request) from exc
        return httpx2.Response(
            status_code=response.status,
            headers=[(name.decode("latin-1"), value.decode("latin-1")) for name, value in response.raw_headers],
            stream=_ResponseStream(response, request),
            request=request,
            extensions={"http_version": b"HTTP/1.1"},
        )

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


class _ResponseStream(httpx2.AsyncByteStream):
    """The body as it arrives; closing it early drops the connection (the upstream stops)."""

    def __init__(self, response: aiohttp.ClientResponse, request: httpx2.Request) -> None:
        self._response = response
        self._request = request

    async def __aiter__(self) -> AsyncIterator[bytes]:
        content = self._response.content
        try:
            while True:
                data = await content.readany()
                if not data:
                    return
                yield data
        except BaseException as exc:
            if isinstance(exc, (asyncio.CancelledError, GeneratorExit)):
                raise
            raise _httpx_error(exc, self._request) from exc

    async def aclose(self) -> None:
        response = self._response
        if response.content.at_eof():
            response.release()
        else:
            response.close()


def _httpx_error(exc: BaseException, request: httpx2.Request) -> BaseException:
    """The httpx2 exception the SDK knows for an aiohttp failure (others pass through)."""
    if isinstance(exc, (asyncio.CancelledError, KeyboardInterrupt, SystemExit, GeneratorExit)):
        return exc
    message = str(exc) or type(exc).__name__
    if isinstance(exc, aiohttp.ConnectionTimeoutError):
        return httpx2.ConnectTimeout(message, request=request)
    if isinstance(exc, aiohttp.ServerTimeoutError):
        return httpx2.ReadTimeout(message, request=request)
    if isinstance(exc, (asyncio.TimeoutError, TimeoutError)):
        return httpx2.ReadTimeout(message, request=request)
    if isinstance(exc, aiohttp.ClientConnectorError):
        return httpx2.ConnectError(message, request=request)
    if isinstance(exc, (aiohttp.ServerDisconnectedError, aiohttp.ClientPayloadError)):
        return httpx2.RemoteProtocolError(message, request=request)
    if isinstance(exc, aiohttp.ClientOSError):
        return httpx2.ReadError(message, request=request)
    if isinstance(exc, aiohttp.ClientError):
        return httpx2.NetworkError(message, request=request)
    return exc
