"""The ASGI application: `create_app()` runs once per Granian worker (`--factory`).

Settings come from the environment (the CLI exports them), the route map is loaded and checked
at start (a reload later swaps in a new one, reload.py), and the lifespan opens one upstream
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

from gateway import __version__
from gateway.api import router
from gateway.cors import CORSMiddleware, OriginPolicy, allowed_origins
from gateway.errors import GatewayError, error_response
from gateway.guard import Deadlines, Drain, RequestGuard, follow_server_signals
from gateway.hosts import HostGuard, HostPolicy, allowed_hosts
from gateway.limits import UpstreamLimiter
from gateway.logs import ContentLogMiddleware, RequestLogMiddleware, configure_logging
from gateway.management import router as management_router
from gateway.openai_routes import router as openai_router
from gateway.openapi import gateway_openapi
from gateway.reload import LiveGateway, LiveStateMiddleware
from gateway.routemap import load_route_map
from gateway.settings import Settings
from gateway.slashes import TrailingSlash
from gateway.translators import load_bindings
from gateway.upstream import UpstreamClients

log = structlog.get_logger()


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()
    route_map = load_route_map(settings.routes)
    bindings = load_bindings(route_map.endpoints)
    # Swapped whole on a routes.yaml reload or a discovery refresh (reload.py).
    live = LiveGateway(settings, route_map, bindings, settings.routes.read_bytes())
    # Every log line is scrubbed of the secrets of the map in force.
    configure_logging(settings.log_format, settings.log_level, lambda: live.secrets)
    drain = Drain(settings.shutdown_grace)
    deadlines = Deadlines(drain.active, settings.body_timeout, settings.send_timeout)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        limiter = UpstreamLimiter(settings.max_concurrent_upstream, settings.queue_timeout)
        clients = UpstreamClients(route_map, limiter=limiter, max_answer_bytes=settings.max_upstream_answer_bytes)
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

    app = FastAPI(
        title="Ollama Gateway",
        version=__version__,
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        # Starlette's slash redirect builds its Location from the Host header; slashes.py serves instead.
        redirect_slashes=False,
    )
    app.include_router(router)
    app.include_router(management_router)
    app.include_router(openai_router)
    app.openapi = partial(gateway_openapi, app)  # type: ignore[method-assign]  # request bodies described
    app.add_exception_handler(GatewayError, _gateway_error)
    app.add_exception_handler(HTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    # Innermost: body limits, cancel-on-disconnect and the shutdown drain (guard.py); `deadlines`
    # times the bodies and stream writes of the requests it tracks.
    app.add_middleware(RequestGuard, drain=drain, max_body_bytes=settings.max_body_bytes)
    if settings.log_content:  # prompts and completions in the log: only when asked (debugging)
        app.add_middleware(ContentLogMiddleware)
    # Pins the route map in force to each request and checks routes.yaml `auth` keys; inside
    # CORS, so a browser's preflight (which carries no key) is still answered.
    app.add_middleware(LiveStateMiddleware, live=live)
    app.add_middleware(TrailingSlash)  # before auth and routing see the path
    # Inside the request log, so refused origins and preflights are logged too.
    hosts = HostPolicy(allowed_hosts(settings.allowed_hosts), listen_host=settings.bind_address()[0])
    app.add_middleware(CORSMiddleware, policy=OriginPolicy(allowed_origins(settings.origins)), hosts=hosts)
    # Outside CORS: a Host that is not ours (DNS rebinding) is refused before anything else runs.
    app.add_middleware(HostGuard, policy=hosts)
    app.add_middleware(RequestLogMiddleware)
    return app


async def _gateway_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, GatewayError)
    state = request.scope.get("state", {}).get("gateway")
    if state is not None:
        exc.message = state.clients.scrub(exc.message)  # belt and braces: no key in any error
    record = request.scope.get("state", {}).get("record")
    if record is not None:
        record.fail(exc)
    return error_response(exc)


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
