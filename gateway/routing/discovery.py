"""Discovery: upstreams with `discover: true` have their `/v1/models` listed and routed.

Each worker refreshes each such upstream in the background: once at start, then every
`discover_interval` seconds, each fetch bounded by `discover_timeout`. Requests never wait for
it; until the first list arrives the upstream's discovered names are simply not there yet. A
failed fetch is logged and the upstream keeps its last list. A list that changed is handed to
`on_change` (routing/live.py builds a new route map snapshot from it).

An id becomes the Ollama name `prefix + id` (listed with `:latest` when it has no tag). What
`/v1/models` says about it is kept where providers say it (openai-mapping.md §6): the context
window (OpenRouter `context_length`, Groq `context_window`, vLLM `max_model_len`, llama.cpp
`meta.n_ctx_train`), vision, tools and thinking (OpenRouter `architecture` and
`supported_parameters`), and embedding models by their id.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import structlog
from pydantic import ValidationError

from gateway.errors import GatewayError
from gateway.routing.resolver import RouteMap
from gateway.routing.schema import ModelRoute, UpstreamConfig
from gateway.upstream.calls import list_models
from gateway.upstream.clients import UpstreamClients

log = structlog.get_logger()

DiscoveredLists = dict[str, list[ModelRoute]]
_RETRY_FAILED_S = 60.0


class Discovery:
    """The refresh tasks of one worker and the last list fetched from each upstream."""

    def __init__(self, clients: Callable[[], UpstreamClients], on_change: Callable[[], None]) -> None:
        self._clients = clients
        self._on_change = on_change
        self._tasks: dict[str, tuple[UpstreamConfig, asyncio.Task[None]]] = {}
        self.lists: DiscoveredLists = {}

    def configure(self, route_map: RouteMap) -> None:
        """Start, keep or stop refresh tasks to match a (new) route map."""
        wanted = {name: config for name, config in route_map.upstreams.items() if config.discover}
        for name, (config, task) in list(self._tasks.items()):
            new = wanted.get(name)
            if new != config:
                task.cancel()
                del self._tasks[name]
                # The last list stays until the next fetch unless it would now be wrong.
                if new is None or (new.base_url, new.prefix) != (config.base_url, config.prefix):
                    self.lists.pop(name, None)
        for name in list(self.lists):
            if name not in wanted:
                del self.lists[name]
        for name, config in wanted.items():
            if name not in self._tasks:
                task = asyncio.get_running_loop().create_task(self._refresh(name, config), name=f"discover-{name}")
                self._tasks[name] = (config, task)

    async def aclose(self) -> None:
        tasks = [task for _, task in self._tasks.values()]
        self._tasks.clear()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _refresh(self, name: str, config: UpstreamConfig) -> None:
        while True:
            delay = config.discover_interval
            try:
                async with asyncio.timeout(config.discover_timeout):
                    clients = self._clients()
                    data = await list_models(clients[name], config.discover_timeout, clients.max_answer_bytes)
            except (GatewayError, TimeoutError) as exc:
                message = exc.message if isinstance(exc, GatewayError) else f"no answer within {config.discover_timeout:g} s"
                kept = len(self.lists.get(name, ()))
                log.warning("discovery_failed", upstream=name, error=message, kept_models=kept)
                delay = min(delay, _RETRY_FAILED_S)
            else:
                routes = discovered_routes(name, config, data)
                if routes != self.lists.get(name):
                    self.lists[name] = routes
                    log.info("discovery_updated", upstream=name, models=len(routes))
                    self._on_change()
            await asyncio.sleep(delay)


def discovered_routes(upstream_name: str, config: UpstreamConfig, data: list[dict[str, Any]]) -> list[ModelRoute]:
    """The route entries for the ids of one `/v1/models` answer, in the upstream's order."""
    routes = []
    seen = set()
    for entry in data:
        model_id = entry.get("id")
        if not isinstance(model_id, str) or not model_id.strip() or model_id in seen or entry.get("active") is False:
            continue
        seen.add(model_id)
        try:
            route = ModelRoute.model_validate({
                "name": config.prefix + model_id,
                "upstream": upstream_name,
                "model": model_id,
                "capabilities": capabilities_of(model_id, entry),
                "context_length": context_length_of(entry),
            })
        except ValidationError:
            continue  # an id that is no usable Ollama name (a '*', spaces at either end)
        if not route.is_pattern:
            routes.append(route)
    return routes


def capabilities_of(model_id: str, entry: dict[str, Any]) -> tuple[str, ...]:
    if "embed" in model_id.lower():
        return ("embedding",)
    capabilities = ["completion"]
    architecture = entry.get("architecture")
    if isinstance(architecture, dict) and "image" in (architecture.get("input_modalities") or ()):
        capabilities.append("vision")
    parameters = entry.get("supported_parameters")
    if isinstance(parameters, list):
        if "tools" in parameters:
            capabilities.append("tools")
        if "reasoning" in parameters or "include_reasoning" in parameters:
            capabilities.append("thinking")
    return tuple(capabilities)


def context_length_of(entry: dict[str, Any]) -> int | None:
    top_provider = entry.get("top_provider")
    meta = entry.get("meta")
    for value in (
        entry.get("context_length"),
        top_provider.get("context_length") if isinstance(top_provider, dict) else None,
        entry.get("context_window"),
        entry.get("max_model_len"),
        meta.get("n_ctx_train") if isinstance(meta, dict) else None,
    ):
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return None
