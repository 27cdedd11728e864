"""The `/v1` calls: a client's body relayed to the target with its model id rewritten, the answer
as the upstream sent it, and its usage (usage.py) put on the request's record.

    RelayCall            `/v1/chat/completions`, `/v1/embeddings`, ...: a JSON body or a
                         multipart form; the answer read whole (`read`) or streamed (`stream`)
    NativeOrTranslated   `/v1/messages`, `/v1/responses`: relayed to an upstream whose quirk says
                         it speaks that API, else translated (exchange.TranslatedCall)

Attempts, retries and fallbacks are the exchange's (`Exchange.run`), as for every call.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Callable, Mapping
from typing import Any, Generic

import orjson

from gateway.logs import RequestRecord
from gateway.routing.resolver import Target
from gateway.upstream.calls import Relay, open_relay
from gateway.upstream.exchange import Exchange, Framing, OpenedStream, RequestT, TranslatedCall, open_stream
from gateway.upstream.forms import MultipartForm
from gateway.upstream.usage import StreamUsage, body_usage

_dumps: Callable[[Any], bytes] = orjson.dumps


class RelayCall:
    """`/v1`: the client's body with the target's upstream model id; the answer as is (`Relay`),
    its usage (usage.py) on the record: read whole (`read`) or streamed (`stream`).

    The body is a JSON object, or a multipart form (`forms.MultipartForm`: its `model` field's
    value replaced, everything else sent byte for byte with the client's Content-Type)."""

    __slots__ = ("exchange", "_body", "_path", "name", "_headers", "_query", "_sent")

    def __init__(self, exchange: Exchange, body: dict[str, Any] | MultipartForm, path: str, name: str,
                 headers: Mapping[str, str] | None = None, query: str = "") -> None:
        self.exchange = exchange
        self._body = body
        self._path = path
        self.name = name  # the model name the client asked for
        self._headers = headers  # the client's headers passed through (`anthropic-*`), if any
        self._query = query
        self._sent = 0  # the bytes of the JSON body sent (the prompt estimate of a stream without usage)

    async def attempt(self, target: Target, first: bool) -> Relay:
        clients = self.exchange.clients
        body = self._body
        if isinstance(body, MultipartForm):
            content, content_type = body.with_field("model", target.upstream_model), body.content_type
        else:
            content, content_type = _dumps({**body, "model": target.upstream_model}), None
            self._sent = len(content)
        self.exchange.attempts.calling(target, self._path)
        await clients.limiter.acquire()
        try:
            return await open_relay(
                clients.of(target), self._path, content, self.name, clients.max_answer_bytes, on_close=clients.limiter.release,
                headers=self._headers, query=self._query, content_type=content_type,
            )
        except BaseException:
            clients.limiter.release()
            raise

    async def read(self, relay: Relay) -> bytes:
        """The whole answer (`Relay.read`), its `usage` on the record (usage.py); closed after."""
        try:
            body = await relay.read()
        finally:
            relay.close()
        prompt, completion = body_usage(body)
        if prompt is not None or completion is not None:
            self.exchange.record.tokens(prompt or 0, completion or 0)
        return body

    async def stream(self, relay: Relay, framing: Framing) -> OpenedStream:
        """The upstream's SSE bytes as they arrive, run to the first read (the first-byte rule)."""
        exchange = self.exchange
        usage = StreamUsage(self._sent // 4)
        return await open_stream(_relayed(relay, exchange.record, usage), framing, exchange.record,
                                 exchange.clients.secrets, allow_empty=True)


async def _relayed(relay: Relay, record: RequestRecord, usage: StreamUsage) -> AsyncGenerator[bytes, None]:
    """The reads as they are; their usage (or its estimate) on the record when the stream ends."""
    complete = False
    try:
        async for data in relay.chunks():
            record.chunks += 1
            usage.feed(data)
            yield data
        complete = True
    finally:
        relay.close()
        if (tokens := usage.tokens(complete)) is not None:
            record.tokens(*tokens)


class NativeOrTranslated(Generic[RequestT]):
    """Per target: relayed to an upstream that speaks the client's API itself (the quirk named
    `native`, e.g. `messages_api`: only `model` rewritten, its answer and errors as it sent them),
    else translated. A fallback without the quirk gets the request translated, and vice versa."""

    __slots__ = ("translated", "relay", "_native")

    def __init__(self, translated: TranslatedCall[RequestT], relay: RelayCall, native: str) -> None:
        self.translated = translated
        self.relay = relay
        self._native = native

    async def attempt(self, target: Target, first: bool) -> bytes | OpenedStream | Relay:
        if getattr(target.quirks, self._native):
            return await self.relay.attempt(target, first)
        return await self.translated.attempt(target, first)
