"""Per-key limits on the wire: routes.yaml `auth.keys[].limits: {rpm, tpm, max_parallel}`.

The front layer asks `admit` right after auth, for every request of a key that has limits (a
key without any costs nothing here: no store operation), and calls `Admitted.done` once the
response is over, a stream's last chunk included. In the worker's shared-state store
(`clients.shared`: Redis with `GATEWAY_REDIS_URL`, else the machine's), under the key's
`key_id`, never the key:

    tpm           checked first, without counting (a take of 0: is the minute's count of
                  prompt+completion tokens already at the limit?); the request's tokens, as
                  its summary line reports them, are added when it is over
    max_parallel  a lease held until the response ends (renewed meanwhile; a crashed worker's
                  lease is freed after `LEASE_TTL`)
    rpm           one request counted in the last minute, only once the others let it in

Beyond a limit: 429 with `Retry-After` (whole seconds, rounded up: when the window has room
again; 1 for max_parallel), in the error shape of the surface asked: Anthropic's on
`/v1/messages`, OpenAI's on the rest of `/v1`, Ollama's `{"error": "..."}` elsewhere. The 429
is counted in `gateway_requests_total` like any status (no key label: labels stay bounded).
"""

from __future__ import annotations

import anyio
from starlette.requests import Request
from starlette.types import Receive, Scope, Send

from gateway.errors import KeyLimited
from gateway.http.anthropic_api import anthropic_error
from gateway.http.auth import ANTHROPIC_PREFIX
from gateway.http.ollama_api import ollama_error
from gateway.http.openai_api import openai_error
from gateway.logs import RequestRecord
from gateway.routing.keys import Grant
from gateway.routing.authschema import KeyLimits
from gateway.upstream.sharedstate import LEASE_TTL, Lease, SharedState

WINDOW = 60.0  # rpm and tpm: per minute
_PARALLEL_RETRY = 1.0


class Admitted:
    """A request let in: what to hand back and count when it is over."""

    __slots__ = ("_store", "_key", "_limits", "_lease")

    def __init__(self, store: SharedState, key: str, limits: KeyLimits, lease: Lease | None) -> None:
        self._store = store
        self._key = key
        self._limits = limits
        self._lease = lease

    async def done(self, record: RequestRecord) -> None:
        # Shielded: a request cancelled (client gone) still frees its lease and counts its tokens.
        with anyio.CancelScope(shield=True):
            if self._lease is not None:
                await self._store.release(self._lease)
            tokens = (record.prompt_tokens or 0) + (record.completion_tokens or 0)
            if self._limits.tpm is not None and tokens > 0:
                await self._store.add(self._key + ":tpm", tokens, WINDOW)


async def admit(store: SharedState, grant: Grant) -> Admitted | KeyLimited:
    """Let the request of a limited key in, or the 429 it gets (nothing counted then)."""
    limits = grant.limits
    assert limits is not None
    key = "key:" + grant.key_id
    if limits.tpm is not None and (waited := await store.take(key + ":tpm", 0, limits.tpm, WINDOW)) is not None:
        return KeyLimited(f"rate limit exceeded: this key may use {limits.tpm} tokens per minute", waited)
    lease = None
    if limits.max_parallel is not None:
        lease = await store.acquire(key + ":parallel", limits.max_parallel, LEASE_TTL)
        if lease is None:
            return KeyLimited(
                f"rate limit exceeded: this key may have {limits.max_parallel} requests in flight at once", _PARALLEL_RETRY
            )
    if limits.rpm is not None and (waited := await store.take(key + ":rpm", 1, limits.rpm, WINDOW)) is not None:
        if lease is not None:
            await store.release(lease)
        return KeyLimited(f"rate limit exceeded: this key may make {limits.rpm} requests per minute", waited)
    return Admitted(store, key, limits, lease)


async def refuse(scope: Scope, receive: Receive, send: Send, error: KeyLimited) -> None:
    """The 429 in the shape of the surface asked (each renderer records it on the request)."""
    path: str = scope["path"]
    if path.startswith(ANTHROPIC_PREFIX):
        render = anthropic_error
    elif path == "/v1" or path.startswith("/v1/"):
        render = openai_error
    else:
        render = ollama_error
    response = await render(Request(scope, receive), error)
    await response(scope, receive, send)
