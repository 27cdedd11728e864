"""The ASGI application: `create_app()` runs once per Granian worker (`--factory`).

Settings come from the environment (the CLI exports them), the route map is loaded and checked
once, and the lifespan opens one upstream client per upstream and closes them at shutdown.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import structlog
from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response

from gateway import __version__
from gateway.api import router
from gateway.catalog import Catalog
from gateway.errors import GatewayError, error_response
from gateway.logs import RequestLogMiddleware, configure_logging
from gateway.routemap import load_route_map
from gateway.settings import Settings
from gateway.state import GatewayState
from gateway.translators import load_bindings
from gateway.upstream import UpstreamClients

log = structlog.get_logger()


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()
    configure_logging(settings.log_format, settings.log_level)
    route_map = load_route_map(settings.routes)
    bindings = load_bindings(route_map.endpoints)
    modified_ns = settings.routes.stat().st_mtime_ns

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        clients = UpstreamClients(route_map)
        catalog = Catalog(route_map.listed_targets(), modified_ns)
        app.state.gateway = GatewayState(settings, route_map, bindings, clients, catalog)
        for warning in route_map.warnings():
            log.warning("route_map", problem=warning)
        log.info("started", routes=str(settings.routes), models=len(route_map.models), upstreams=len(route_map.upstreams))
        try:
            yield
        finally:
            await clients.aclose()

    app = FastAPI(
        title="Ollama Gateway",
        version=__version__,
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
    )
    app.include_router(router)
    app.add_exception_handler(GatewayError, _gateway_error)
    app.add_exception_handler(HTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_middleware(RequestLogMiddleware)
    return app


async def _gateway_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, GatewayError)
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
