"""The upstreams of the map in force, ready to call: one `UpstreamClient` per upstream per worker.

Everything a call needs that does not change per request is built once, when the map loads: the
URL base and query string, the headers (auth in the upstream's own `auth_header`, HTTP basic auth
from a base_url's user and password, the configured `headers:`), the timeouts. Bytes travel over
one aiohttp session per upstream (its connection pool, keep-alive on, sized for thousands of
concurrent streams), opened on first use inside the worker's event loop. No SDK or httpx request
object is built per request: the benchmark measured that machinery at 5 to 20 times the floor.

The base URL is joined as the `openai` SDK joins it (`base_url` + `/chat/completions`, the query
of routes.yaml `query:` added, Azure's `api-version` included). A key is sent as
`Authorization: Bearer KEY`, or bare in another header (`auth_header: api-key`, as the SDK's Azure
client does); an upstream without `api_key` gets no Authorization of ours. With
`pass_client_key`, the client's own bearer token replaces ours per request (`redact.CLIENT_KEY`).

A reloaded map keeps the client (and its pooled connections) of every upstream whose settings
did not change (`UpstreamClients(route_map, previous=...)`, see routing/live.py).
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Mapping
from typing import cast
from urllib.parse import urlencode

import aiohttp
from aiohttp.client_proto import ResponseHandler

from gateway import __version__, tracing
from gateway.errors import UpstreamUnavailable
from gateway.routing.resolver import RouteMap, Target
from gateway.routing.schema import UpstreamConfig
from gateway.upstream import balance
from gateway.upstream.admission import Admission
from gateway.upstream.faults import Origin
from gateway.upstream.limiter import UpstreamLimiter
from gateway.upstream.redact import CLIENT_KEY, Secrets
from gateway.upstream.sharedstate import SharedState

_MAX_CONNECTIONS = 4096  # per upstream per worker: room for thousands of concurrent streams
_KEEPALIVE_EXPIRY = 30.0
_USER_AGENT = f"ollama-gateway/{__version__}"
_FIRST_SLICE = 16 * 1024  # of a network read that starts an event stream: parsed at once


class UpstreamClient:
    """One upstream: its session, and the URL, headers and timeouts of every call to it."""

    __slots__ = ("name", "config", "origin", "_base", "_query", "headers", "timeout", "_session", "_missing_key")

    def __init__(self, name: str, config: UpstreamConfig, secrets: Secrets) -> None:
        self.name = name
        self.config = config
        connect = min(config.connect_timeout, config.timeout)
        self.origin = Origin(name, connect, config.timeout, config.display_url, secrets)
        base, _, query = config.request_url.partition("?")
        self._base = base.rstrip("/")
        extra = urlencode(config.query) if config.query else ""
        query = "&".join(part for part in (query, extra) if part)
        self._query = f"?{query}" if query else ""
        self.headers = _static_headers(config)
        # sock_read: silence between reads (before the status line: "timeout"; after: "idle").
        self.timeout = aiohttp.ClientTimeout(total=None, sock_connect=connect, sock_read=config.timeout)
        self._session: aiohttp.ClientSession | None = None
        variable = config.missing_key_variable
        self._missing_key = (
            UpstreamUnavailable(f"upstream '{name}' has no API key: set the environment variable {variable}", verdict="next")
            if variable else None
        )

    def url(self, path: str, query: str = "") -> str:
        """The URL of `path`, with the upstream's own query parameters and then `query`, if any."""
        if query:
            return self._base + path + (self._query + "&" if self._query else "?") + query
        return self._base + path + self._query

    @property
    def session(self) -> aiohttp.ClientSession:
        session = self._session
        if session is None:
            connector = aiohttp.TCPConnector(
                limit=_MAX_CONNECTIONS, limit_per_host=0, keepalive_timeout=_KEEPALIVE_EXPIRY, ttl_dns_cache=60
            )
            if isinstance(getattr(connector, "_factory", None), functools.partial):  # aiohttp's private hook; an
                # aiohttp without it keeps its own protocol, and only StreamStartFirst's saving is lost
                connector._factory = cast(
                    "functools.partial[ResponseHandler]", functools.partial(StreamStartFirst, loop=asyncio.get_running_loop())
                )
            session = self._session = aiohttp.ClientSession(
                connector=connector, skip_auto_headers=("User-Agent",), auto_decompress=True
            )
        return session

    def request_headers(self) -> Mapping[str, str]:
        """The headers of one call: the static ones, or with the client's key (`pass_client_key`);
        with tracing on, the attempt's `traceparent` (`tracing.CARRIED`) too."""
        headers: Mapping[str, str] = self.headers
        if self.config.pass_client_key and (key := CLIENT_KEY.get()):
            headers = {**headers, "Authorization": f"Bearer {key}"}
        elif self._missing_key is not None:
            raise self._missing_key
        if tracing.TRACER is not None and (carried := tracing.CARRIED.get()):
            headers = {**headers, **carried}
        return headers

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


class StreamStartFirst(ResponseHandler):
    """aiohttp's connection protocol, but a network read that starts an event stream (its status
    line and `text/event-stream` within it) and is larger than `_FIRST_SLICE` is parsed in two
    steps: its start at once, the rest one event-loop turn later.

    A fast upstream writes hundreds of events in one go; aiohttp parses a whole read (a Python
    call per HTTP chunk) before the response is handed over, so the first line of a 512-chunk
    stream waited about 0.6 ms for the other 511. Now the request has its status and first events
    first. Order is kept: what arrives meanwhile, and the end of the connection, come after the rest.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(loop)
        self._rest: list[bytes] | None = None

    def data_received(self, data: bytes) -> None:
        rest = self._rest
        if rest is not None:
            if data:
                rest.append(data)
            return
        if len(data) <= _FIRST_SLICE or not data.startswith(b"HTTP/") or b"text/event-stream" not in data[:4096]:
            super().data_received(data)
            return
        self._rest = [data[_FIRST_SLICE:]]
        super().data_received(data[:_FIRST_SLICE])
        self._loop.call_soon(self._parse_rest)

    def _parse_rest(self) -> None:
        rest, self._rest = self._rest, None
        if rest:
            super().data_received(rest[0] if len(rest) == 1 else b"".join(rest))

    def eof_received(self) -> None:
        self._parse_rest()
        super().eof_received()

    def connection_lost(self, exc: BaseException | None) -> None:
        self._parse_rest()
        super().connection_lost(exc)


def _static_headers(config: UpstreamConfig) -> dict[str, str]:
    headers = {"Content-Type": "application/json", "Accept": "application/json", "User-Agent": _USER_AGENT}
    basic = config.basic_authorization
    if basic is not None:
        headers["Authorization"] = basic
    if config.api_key is not None:
        key = config.api_key.get_secret_value()
        header = config.auth_header
        headers[header] = f"Bearer {key}" if header.lower() == "authorization" else key
    # Configured headers win (an explicit Authorization replaces the Bearer key, as with the SDK).
    for name, value in config.headers.items():
        for existing in [existing for existing in headers if existing.lower() == name.lower()]:
            del headers[existing]
        headers[name] = value
    return headers


class UpstreamClients:
    """The per-worker set of upstream clients of one route map, by upstream name."""

    __slots__ = ("_configs", "_clients", "secrets", "limiter", "max_answer_bytes", "shared", "admission")

    def __init__(
        self,
        route_map: RouteMap,
        previous: UpstreamClients | None = None,
        limiter: UpstreamLimiter | None = None,
        max_answer_bytes: int | None = None,
        shared: SharedState | None = None,
    ) -> None:
        self.secrets = route_map.secrets
        self._configs = dict(route_map.upstreams)
        self._clients: dict[str, UpstreamClient] = {}
        for name, config in route_map.upstreams.items():
            kept = previous._clients.get(name) if previous is not None and previous._configs.get(name) == config else None
            # A kept client's fault messages must still scrub with the new map's secrets.
            if kept is not None:
                kept.origin.secrets = self.secrets
            self._clients[name] = kept or UpstreamClient(name, config, self.secrets)
        # One limit per worker, whatever reloads happen: a reloaded set keeps its predecessor's.
        self.limiter: UpstreamLimiter = limiter or (previous.limiter if previous is not None else UpstreamLimiter(1 << 30, 0.0))
        # GATEWAY_MAX_UPSTREAM_ANSWER_BYTES: the most a non-streamed answer may be (502 beyond).
        self.max_answer_bytes: int = max_answer_bytes or (previous.max_answer_bytes if previous is not None else 1 << 62)
        # The worker's one shared-state store (sharedstate.py), opened and closed by the app's
        # lifespan; a reloaded set keeps its predecessor's (outside a served app: this process's).
        self.shared: SharedState = shared or (previous.shared if previous is not None else _process_state())
        # Cooldown views and in-flight counts per upstream over that store (admission.py): kept
        # across reloads.
        self.admission: Admission = previous.admission if previous is not None else Admission(self.shared, self.limiter.queue_timeout)

    def choose(self, target: Target) -> Target:
        """The balanced choice among the deployments of `target`'s entry (balance.py); `target`
        itself for an entry with one upstream."""
        group = target.group
        if group is None:
            return target
        admission = self.admission
        return balance.order(group, admission.in_flight, admission.known_cooling)[0]

    def __getitem__(self, name: str) -> UpstreamClient:
        return self._clients[name]

    def of(self, target: Target) -> UpstreamClient:
        return self._clients[target.upstream_name]

    def scrub(self, text: str) -> str:
        """`text` with every secret of the route map masked (for error messages of any origin)."""
        return self.secrets.scrub(text)

    async def aclose(self) -> None:
        for client in self._clients.values():
            await client.aclose()

    def left_out_of(self, successor: UpstreamClients) -> list[UpstreamClient]:
        """This set's clients that `successor` does not reuse (to close once nothing uses them)."""
        kept = {id(client) for client in successor._clients.values()}
        return [client for client in self._clients.values() if id(client) not in kept]

    def uses(self, client: UpstreamClient) -> bool:
        return any(mine is client for mine in self._clients.values())


def _process_state() -> SharedState:
    from gateway.upstream.localstate import LocalState

    return LocalState(None)


async def close_clients(clients: list[UpstreamClient]) -> None:
    for client in clients:
        await client.aclose()
