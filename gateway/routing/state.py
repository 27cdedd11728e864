"""What a request works with: settings, route map, translators, clients, catalog, auth keys.

One immutable value per route map in force; routing/live.py swaps in a new one on a reload or a
discovery refresh, and each request keeps the one it started with.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from gateway.routing.keys import KeyChecker
from gateway.routing.catalog import Catalog
from gateway.routing.resolver import RouteMap
from gateway.settings import Settings
from gateway.translators import Translator
from gateway.upstream.clients import UpstreamClients


@dataclass(frozen=True, slots=True)
class GatewayState:
    settings: Settings
    route_map: RouteMap
    bindings: dict[str, type[Translator[Any]]]
    clients: UpstreamClients
    catalog: Catalog
    auth: KeyChecker | None = None  # routes.yaml `auth`: None means no key is checked
