"""The route map in force, swapped whole: hot reload (file watch, SIGHUP) and discovery refreshes.

Each worker holds a `LiveGateway`. What a request needs (route map, translators, upstream
clients, catalog, auth keys) is one immutable `GatewayState`; the front layer (http/front.py)
reads the current one once, when the request starts, and the request keeps it to its last byte. A reload
or a discovery refresh builds a new state and swaps it in: requests in flight finish on the map
they started with, new ones get the new one.

Reload triggers, in every worker:
- a change to routes.yaml: each worker watches the file's directory (watchfiles; a change to
  the content is what counts, so editors that replace the file and Kubernetes ConfigMap symlink
  swaps are seen too) and compares the content every few seconds besides, so a change made
  before the watch began, or an event the file system never sent, is picked up all the same;
- SIGHUP: `ollama-gateway serve` forwards the master's SIGHUP to its workers (`forward_sighup`)
  instead of Granian's default of respawning them, so nothing is restarted.

An invalid new file (YAML, schema, references, translator bindings) is rejected with one
`routes_reload_rejected` error line naming the problem; the old map stays in force. Upstream
clients whose settings did not change are reused, connection pools included; the others are
closed once no request that started before the reload still uses them.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import signal
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

import structlog
from watchfiles import Change, awatch

from gateway.routing.keys import KeyChecker
from gateway.routing.catalog import Catalog
from gateway.routing.discovery import Discovery
from gateway.upstream.redact import Secrets
from gateway.routing.loader import RouteMapError, load_route_map
from gateway.routing.resolver import RouteMap
from gateway.settings import Settings
from gateway.routing.state import GatewayState
from gateway.translators import BindingError, Translator, load_bindings
from gateway.upstream.clients import UpstreamClient, UpstreamClients, close_clients

log = structlog.get_logger()

_RECHECK_MS = 3000

class Snapshot:
    """One state and the number of requests using it."""

    __slots__ = ("state", "users", "retired", "passes_client_key")

    def __init__(self, state: GatewayState) -> None:
        self.state = state
        self.users = 0
        self.retired = False
        self.passes_client_key = any(upstream.pass_client_key for upstream in state.route_map.upstreams.values())


class LiveGateway:
    """The state in force in this worker, and what replaces it."""

    def __init__(self, settings: Settings, route_map: RouteMap, bindings: dict[str, type[Translator[Any]]], text: bytes) -> None:
        self.settings = settings
        self.path = settings.routes.absolute()
        self._route_map = route_map  # as in the file: without discovered names
        self._bindings = bindings
        self._digest = hashlib.sha256(text).digest()
        self._problem: str | None = None
        self._modified_ns = _modified_ns(self.path)
        self._retired: list[Snapshot] = []
        self._orphans: list[UpstreamClient] = []
        self._tasks: set[asyncio.Task[Any]] = set()
        self._stop = asyncio.Event()
        self._current: Snapshot | None = None
        self.discovery = Discovery(lambda: self.current.state.clients, self._discovered)

    @property
    def secrets(self) -> Secrets:
        """The secrets of the map in force (of the map loaded at start, before `start`)."""
        return self._current.state.route_map.secrets if self._current is not None else self._route_map.secrets

    @property
    def loaded(self) -> bool:
        """Whether a route map is in force (`start` has run): what /health/ready waits for."""
        return self._current is not None

    @property
    def current(self) -> Snapshot:
        assert self._current is not None, "LiveGateway.start() has not run"
        return self._current

    def start(self, clients: UpstreamClients) -> None:
        """Put the first state in force and start watching (in the worker's lifespan)."""
        self._current = Snapshot(self._build(self._route_map, self._bindings, clients, None))
        for warning in self._route_map.warnings():
            log.warning("route_map", problem=warning)
        self.discovery.configure(self._route_map)
        self._spawn(self._watch())
        loop = asyncio.get_running_loop()
        try:
            loop.add_signal_handler(signal.SIGHUP, self.reload, "sighup")
        except (NotImplementedError, RuntimeError, ValueError):
            log.warning("sighup_unavailable", reason="not in the main thread or not supported here")

    async def stop(self) -> None:
        """Stop watching and discovering; close every client (at the end of the lifespan)."""
        self._stop.set()
        try:
            asyncio.get_running_loop().remove_signal_handler(signal.SIGHUP)
        except (NotImplementedError, RuntimeError, ValueError):
            pass
        await self.discovery.aclose()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await close_clients(self._orphans)
        self._orphans = []
        if self._current is not None:
            await self._current.state.clients.aclose()

    # -- reload -----------------------------------------------------------------------------

    def reload(self, reason: str = "manual") -> bool:
        """Read routes.yaml again and put it in force if it is valid; True if the map changed.

        A file event whose content is what is already loaded does nothing; SIGHUP always reloads.
        """
        try:
            text = self.path.read_bytes()
        except OSError as exc:
            problem = f"cannot read: {exc.strerror or exc}"
            if reason != "file" or problem != self._problem:  # once, not at every recheck
                log.error("routes_reload_rejected", reason=reason, routes=str(self.path), error=problem, worker_pid=os.getpid())
                _count_reload("rejected")
            self._problem = problem
            return False
        self._problem = None
        digest = hashlib.sha256(text).digest()
        if reason == "file" and digest == self._digest:
            return False
        self._digest = digest
        try:
            route_map = load_route_map(self.path, text=text.decode("utf-8", errors="replace"))
            bindings = load_bindings(route_map.endpoints)
        except (RouteMapError, BindingError) as exc:
            log.error("routes_reload_rejected", reason=reason, routes=str(self.path), error=str(exc),
                      kept="the map already in force", worker_pid=os.getpid())
            _count_reload("rejected")
            return False
        self._route_map = route_map
        self._bindings = bindings
        self._modified_ns = _modified_ns(self.path)
        clients = UpstreamClients(route_map, previous=self.current.state.clients)
        self.discovery.configure(route_map)
        self._swap(self._build(route_map, bindings, clients, self.current.state.catalog))
        for warning in route_map.warnings():
            log.warning("route_map", problem=warning)
        log.info("routes_reloaded", reason=reason, routes=str(self.path), models=len(route_map.models),
                 upstreams=len(route_map.upstreams), worker_pid=os.getpid())
        _count_reload("ok")
        return True

    def _discovered(self) -> None:
        """A discovery list changed: the same map and clients, with the new discovered names."""
        state = self.current.state
        self._swap(self._build(self._route_map, self._bindings, state.clients, state.catalog))

    def _build(
        self, route_map: RouteMap, bindings: dict[str, type[Translator[Any]]], clients: UpstreamClients, previous: Catalog | None
    ) -> GatewayState:
        lists = {name: routes for name, routes in self.discovery.lists.items() if name in route_map.upstreams}
        routed = route_map.with_discovered(lists) if lists else route_map
        catalog = Catalog(routed.listed_targets(), self._modified_ns, previous)
        checker = KeyChecker(route_map.auth) if route_map.auth is not None else None
        return GatewayState(self.settings, routed, bindings, clients, catalog, checker)

    def _swap(self, state: GatewayState) -> None:
        old = self.current
        self._current = Snapshot(state)
        old.retired = True
        self._orphans += old.state.clients.left_out_of(state.clients)
        self._retired.append(old)
        self.collect()

    def collect(self) -> None:
        """Close the clients that neither the current state nor a request in flight still uses."""
        self._retired = [snapshot for snapshot in self._retired if snapshot.users]
        if not self._orphans:
            return
        in_use = [self.current.state.clients, *(snapshot.state.clients for snapshot in self._retired)]
        closable = [client for client in self._orphans if not any(clients.uses(client) for clients in in_use)]
        if closable:
            self._orphans = [client for client in self._orphans if client not in closable]
            self._spawn(close_clients(closable))

    # -- watching ---------------------------------------------------------------------------

    async def _watch(self) -> None:
        name = self.path.name

        def relevant(change: Change, path: str) -> bool:
            # The file itself, or a Kubernetes ConfigMap's `..data` symlink swap beside it.
            base = os.path.basename(path)
            return base == name or base.startswith("..")

        try:
            # `yield_on_timeout`: every few seconds without an event the content is compared too,
            # so a change made before the watch began (or an event lost) is still picked up.
            async for _ in awatch(self.path.parent, watch_filter=relevant, stop_event=self._stop, recursive=False,
                                  debounce=400, step=50, rust_timeout=_RECHECK_MS, yield_on_timeout=True):
                self.reload("file")
        except (OSError, RuntimeError) as exc:
            log.warning("routes_watch_unavailable", routes=str(self.path), error=str(exc), fallback="SIGHUP reloads")

    def _spawn(self, coroutine: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


def _count_reload(result: str) -> None:
    from gateway import metrics  # loaded in the workers only

    metrics.reloaded(result)


def _modified_ns(path: Path) -> int:
    try:
        return path.stat().st_mtime_ns
    except OSError:
        return 0

