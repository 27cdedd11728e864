"""Health probes and the Prometheus scrape.

    GET /health/live     200 while the worker serves at all (a liveness probe)
    GET /health/ready    200 once the route map is in force; 503 from the moment the drain
                         begins (SIGTERM), so a load balancer stops sending new requests before
                         the in-flight ones are over (a readiness probe)
    GET /metrics         the replica's metrics, all workers counted (gateway/metrics.py)

The health paths are answered by the front layer before auth, the map and the guard: no key is
needed even with `auth` on, and they cost a dict lookup. `/metrics` is a `Direct` endpoint
behind auth like the API.
"""

from __future__ import annotations

import anyio
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Send

LIVE = "/health/live"
READY = "/health/ready"
HEALTH_PATHS = frozenset({LIVE, READY})
HEALTH_METHODS = frozenset({"GET", "HEAD"})
METRICS = "/metrics"

_JSON = (b"content-type", b"application/json; charset=utf-8")
_BODIES = {
    "ok": b'{"status":"ok"}',
    "starting": b'{"status":"starting"}',
    "draining": b'{"status":"draining"}',
}


async def answer_health(send: Send, path: str, method: str, *, loaded: bool, ready: bool) -> None:
    """The probe's answer: `ok`, or 503 `starting` (no map yet) / `draining` (shutdown begun)."""
    state = "ok"
    if path == READY:
        state = "draining" if not ready else "ok" if loaded else "starting"
    body = _BODIES[state]
    headers = [_JSON, (b"content-length", str(len(body)).encode()), (b"cache-control", b"no-store")]
    if state == "draining":
        headers.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": 200 if state == "ok" else 503, "headers": headers})
    await send({"type": "http.response.body", "body": b"" if method == "HEAD" else body, "more_body": False})


async def metrics(request: Request) -> Response:
    """The Prometheus text exposition; read off the event loop (it reads every worker's files)."""
    from gateway import metrics as gateway_metrics

    body = await anyio.to_thread.run_sync(gateway_metrics.render)
    return Response(body, media_type=gateway_metrics.MEDIA_TYPE, headers={"Cache-Control": "no-store"})
