"""What one worker holds for its lifetime: settings, route map, translators, clients, catalog."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from gateway.catalog import Catalog
from gateway.routemap import RouteMap
from gateway.settings import Settings
from gateway.translators import Translator
from gateway.upstream import UpstreamClients


@dataclass(frozen=True, slots=True)
class GatewayState:
    settings: Settings
    route_map: RouteMap
    bindings: dict[str, type[Translator[Any]]]
    clients: UpstreamClients
    catalog: Catalog
