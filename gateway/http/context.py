"""One request's context: made once by the front layer (`front.py`), kept in the scope under one key.

    record     the summary line's fields (logs.RequestRecord), filled in as the request goes
    clock      Ollama's instants for the final chunk's metrics (translators.clock.RequestClock)
    state      the map in force when the request started (routing.state.GatewayState): a reload
               meanwhile does not change what this request is served with
    grant      what the request's auth key may use (None: routes.yaml has no `auth`)

Handlers read it with `context_of(request)`; nothing else is looked up from the scope, and
nothing of it is passed through signatures below the handler but what a layer needs.
"""

from __future__ import annotations

import time

import structlog
from starlette.requests import Request
from starlette.types import Scope

from gateway import logs
from gateway.errors import ModelForbidden, ModelNotFound
from gateway.logs import RequestRecord
from gateway.routing.keys import Grant
from gateway.routing.resolver import Target
from gateway.routing.state import GatewayState
from gateway.translators.clock import RequestClock
from gateway.upstream.exchange import Exchange

CONTEXT_KEY = "gateway.context"

log = structlog.get_logger()


class RequestContext:
    __slots__ = ("record", "clock", "state", "grant")

    def __init__(self, record: RequestRecord, state: GatewayState) -> None:
        self.record = record
        self.clock = RequestClock(record.started)
        self.state = state
        self.grant: Grant | None = None

    def route(self, name: str, shown_name: str | None = None, balanced: bool = False) -> Target:
        """The target serving `name` on this request's map: 404 if none, 403 if its key may not.

        For an entry with `targets`: its first deployment (what /api/show describes), or with
        `balanced` (a request that goes upstream) this request's balanced choice (balance.py).
        Called once the body is validated: the end of the request's body stage (`validated`).
        """
        record = self.record
        if not record.validated:
            record.validated = time.perf_counter_ns()
        record.model = name
        if logs.DEBUG:
            log.debug("validated", endpoint=record.path, model=name)
        target = self.state.route_map.resolve(name)
        if target is None:
            raise ModelNotFound(shown_name if shown_name is not None else name)
        if balanced and target.group is not None:
            target = self.state.clients.choose(target)
        route = target.route
        record.route = route.name if route.is_pattern else route.listed_name  # bounded: an entry of the map
        grant = self.grant
        if grant is not None and not grant.allows(name, target.listed_name, None if target.route.is_pattern else target.route.name):
            raise ModelForbidden(name)
        record.upstream = target.upstream_name
        record.upstream_model = target.upstream_model
        if logs.DEBUG:
            log.debug("routed", route=target.route.name, upstream=target.upstream_name, upstream_model=target.upstream_model)
        return target

    def exchange(self) -> Exchange:
        """The attempts of this request's upstream call (retries and fallbacks on this map)."""
        return Exchange(self.state.clients, self.state.route_map, self.record)


def context_of(request: Request) -> RequestContext:
    context: RequestContext = request.scope[CONTEXT_KEY]
    return context


def context_in(scope: Scope) -> RequestContext | None:
    """The context of a scope the front layer may not have seen (a lifespan, a refusal before it)."""
    context: RequestContext | None = scope.get(CONTEXT_KEY)
    return context
