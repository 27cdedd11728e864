"""The ASGI application: `create_app()` runs once per Granian worker (`--factory`).

Settings come from the environment (the CLI exports them), the route map is loaded and checked
at start (a reload later swaps in a new one, routing/live.py), and the lifespan opens one upstream
client per upstream and closes them at shutdown. The
lifespan also follows the server's SIGTERM to drain in-flight requests (`guard.Drain`); Granian
runs the lifespan shutdown only once they are done.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial

import structlog
from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response

from gateway import __version__, tracing
from gateway.errors import GatewayError, error_response
from gateway.http.cors import Cors, OriginPolicy, allowed_origins
from gateway.http import anthropic_api, observability, ollama_api, openai_api, responses_api
from gateway.http.anthropic_api import anthropic_error
from gateway.http.anthropic_api import router as anthropic_router
from gateway.http.context import context_in
from gateway.http.front import Direct, Front, internal_error
from gateway.http.guard import Deadlines, Drain, follow_server_signals
from gateway.http.hosts import HostPolicy, allowed_hosts
from gateway.http.management import router as management_router
from gateway.http.ollama_api import ollama_error, router
from gateway.http.openai_api import openai_error
from gateway.http.openai_api import router as openai_router
from gateway.http.openapi import gateway_openapi
from gateway.logs import configure_logging
from gateway.routing.live import LiveGateway
from gateway.routing.loader import load_route_map
from gateway.settings import Settings
from gateway.translators import load_bindings
from gateway.upstream.clients import UpstreamClients
from gateway.upstream.limiter import UpstreamLimiter
from gateway.upstream.sharedstate import open_state

log = structlog.get_logger()


def create_app(settings: Settings | None = None) -> Front:
    settings = settings or Settings()
    route_map = load_route_map(settings.routes)
    bindings = load_bindings(route_map.endpoints)
    # Swapped whole on a routes.yaml reload or a discovery refresh (routing/live.py).
    live = LiveGateway(settings, route_map, bindings, settings.routes.read_bytes())
    # Every log line is scrubbed of the secrets of the map in force.
    configure_logging(settings.log_format, settings.log_level, lambda: live.secrets)
    tracing.setup()  # spans only with the otel extra and an OTLP endpoint; decided once, here
    drain = Drain(settings.shutdown_grace)
    deadlines = Deadlines(drain.active, settings.body_timeout, settings.send_timeout)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        limiter = UpstreamLimiter(settings.max_concurrent_upstream, settings.queue_timeout)
        # One shared-state store per worker (Redis with GATEWAY_REDIS_URL, else the machine's).
        shared = open_state(settings)
        clients = UpstreamClients(
            route_map, limiter=limiter, max_answer_bytes=settings.max_upstream_answer_bytes, shared=shared,
        )
        stop_following = follow_server_signals(drain)
        deadlines.start()
        live.start(clients)
        log.info("started", routes=str(settings.routes), models=len(route_map.models), upstreams=len(route_map.upstreams))
        try:
            yield
        finally:
            stop_following()
            deadlines.stop()
            await live.stop()
            await shared.close()
            tracing.shutdown()

    app = FastAPI(
        title="Ollama Gateway",
        version=__version__,
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        # Starlette's slash redirect builds its Location from the Host header; slashes.py serves instead.
        redirect_slashes=False,
        # FastAPI's own OpenTelemetry (spans, metrics, logs of validation errors with their input)
        # off: the gateway's spans are its own (tracing.py), and no prompt leaves in a log record.
        telemetry={"tracing": False, "metrics": False, "logs": False, "operation_spans": False, "auto_configure": False},
    )
    app.include_router(router)
    app.include_router(management_router)
    app.include_router(openai_router)
    app.include_router(anthropic_router)
    app.include_router(responses_api.router)
    app.openapi = partial(gateway_openapi, app)  # type: ignore[method-assign]  # request bodies described
    app.add_exception_handler(GatewayError, ollama_error)
    app.add_exception_handler(HTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    # A bug in a FastAPI-routed handler: Starlette's outermost layer answers with this, then
    # re-raises to the front layer, which logs it in one line (front.py).
    app.add_exception_handler(Exception, _internal_error)
    # One pure-ASGI layer in front of everything: request id and log line, Host, CORS, trailing
    # slash, the map in force, auth, and the guard (body limit, disconnects, drain); it calls the
    # hot endpoints' handlers itself and hands every other request to FastAPI (front.py).
    hosts = HostPolicy(allowed_hosts(settings.allowed_hosts), listen_host=settings.bind_address()[0])
    return Front(
        app, live=live, hosts=hosts, cors=Cors(OriginPolicy(allowed_origins(settings.origins)), hosts),
        drain=drain, max_body_bytes=settings.max_body_bytes, log_content=settings.log_content, direct=_direct_routes(),
        root_path=settings.root_path,
        endpoints=frozenset(path for route in app.routes if "{" not in (path := getattr(route, "path", "{"))),
    )


def _direct_routes() -> dict[tuple[str, str], Direct]:
    """The hot endpoints, served by the front layer without FastAPI's routing and handler layers
    (they are still routes of the app, so /openapi.json describes them)."""
    ollama = {path: Direct(handler, ollama_error) for path, handler in (
        ("/api/chat", ollama_api.chat), ("/api/generate", ollama_api.generate),
        ("/api/embed", ollama_api.embed), ("/api/embeddings", ollama_api.embeddings),
    )}
    openai = {path: Direct(handler, openai_error) for path, handler in (
        ("/v1/chat/completions", openai_api.chat_completions), ("/v1/completions", openai_api.completions),
        ("/v1/embeddings", openai_api.embeddings), ("/v1/responses", responses_api.responses),
        ("/v1/audio/transcriptions", openai_api.audio_transcriptions),
    )}
    anthropic = {path: Direct(handler, anthropic_error) for path, handler in (
        ("/v1/messages", anthropic_api.messages), ("/v1/messages/count_tokens", anthropic_api.count_tokens),
    )}
    routes = {("POST", path): direct for path, direct in (ollama | openai | anthropic).items()}
    # Behind auth like the API; the health probes are answered before it (front.py).
    routes[("GET", observability.METRICS)] = Direct(observability.metrics, ollama_error)
    return routes


async def _internal_error(request: Request, exc: Exception) -> Response:
    context = context_in(request.scope)
    assert context is not None
    return error_response(internal_error(context.record))


async def _http_error(request: Request, exc: Exception) -> Response:
    # Ollama (gin) answers unknown paths and wrong methods in plain text, not JSON.
    assert isinstance(exc, HTTPException)
    if exc.status_code == 405:
        return PlainTextResponse("405 method not allowed", status_code=405)
    if exc.status_code == 404:
        return PlainTextResponse("404 page not found", status_code=404)
    return error_response(GatewayError(str(exc.detail), status_code=exc.status_code))


async def _validation_error(request: Request, exc: Exception) -> Response:
    return error_response(GatewayError(str(exc), status_code=400))
