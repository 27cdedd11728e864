"""Name resolution: which upstream, model id and quirks serve an Ollama model name.

`RouteMap` is the validated file (`schema.RouteFile`) plus an index of its names. Resolution
(`RouteMap.resolve`), case-insensitive and with `x` = `x:latest` as in Ollama: an exact name or
alias; else a discovered name (`prefix` + an id from the upstream's `/v1/models`); else the
first pattern that matches. A pattern listed *before* an exact entry wins over it: among the
entries of `models`, the first match wins. Answers are cached per map (a new map per reload or
discovery round starts empty).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from pydantic import PrivateAttr, model_validator

from gateway.routing.names import canonical_name, strip_latest, tagged
from gateway.routing.presets import PRESETS, Quirks
from gateway.routing.schema import ModelRoute, RouteFile, UpstreamConfig

_CACHE_LIMIT = 4096


@dataclass(frozen=True, slots=True)
class Target:
    """Where one request goes: the matched entry, its upstream, and the upstream's model id.

    `listed_name` is the `/api/tags` name that matched (an exact name, alias or discovered
    name, with its tag); None when a pattern matched. `group`: the entry's deployments when it
    lists `targets` (this target is one of them), None for an entry with one `upstream`.
    """

    route: ModelRoute
    upstream_name: str
    upstream: UpstreamConfig
    upstream_model: str
    quirks: Quirks
    listed_name: str | None = None
    group: TargetGroup | None = field(default=None, compare=False, repr=False)
    weight: int = 1


class TargetGroup:
    """The deployments of one entry as one name resolved (`targets`, in file order), and the
    worker's balancing state for them (`upstream/balance.py`)."""

    __slots__ = ("targets", "balance", "current", "turn")

    def __init__(self, balance: str) -> None:
        self.targets: tuple[Target, ...] = ()
        self.balance = balance
        self.current: list[int] = []  # smooth weighted round robin: each target's current weight
        self.turn = 0  # least_busy: the turn among targets tied for first place


class RouteMap(RouteFile):
    """The route map: the file's models, indexed by name, and asked which target serves a name."""

    # Canonical exact names and aliases -> index in `models`; patterns as (index, prefix, suffix).
    _exact: dict[str, int] = PrivateAttr(default_factory=dict)
    _patterns: list[tuple[int, str, str]] = PrivateAttr(default_factory=list)
    _cache: dict[str, Target | None] = PrivateAttr(default_factory=dict)
    # Discovered names (canonical) -> their targets; replaced as a whole by `with_discovered`.
    _discovered: dict[str, Target] = PrivateAttr(default_factory=dict)
    _warnings: list[str] = PrivateAttr(default_factory=list)

    @model_validator(mode="after")
    def _index(self) -> RouteMap:
        """Index the names (the schema has checked that each belongs to one entry), then the fallbacks."""
        for index, route in enumerate(self.models):
            if route.is_pattern:
                prefix, suffix = route.name.lower().split("*")
                self._patterns.append((index, prefix, suffix))
                continue
            for name in (route.name, *route.aliases):
                self._exact[canonical_name(name)] = index
        self._check_fallbacks()
        return self

    def _check_fallbacks(self) -> None:
        discovering = any(upstream.discover for upstream in self.upstreams.values())
        for index, route in enumerate(self.models):
            for fallback in route.fallbacks:
                target = self._match(fallback, canonical_name(fallback))
                if target is None and not discovering:
                    raise ValueError(
                        f"models[{index}] ({route.name!r}): fallback {fallback!r} matches no entry of models"
                    )
                if target is None:
                    self._warnings.append(
                        f"models[{index}] ({route.name!r}): fallback {fallback!r} matches no entry of models; "
                        "it is used only if a discovered list holds it"
                    )
                elif target.route is route and not route.is_pattern:
                    raise ValueError(f"models[{index}] ({route.name!r}): fallback {fallback!r} is this same entry")

    def resolve(self, name: str) -> Target | None:
        """The target serving an Ollama model name (any case, with or without `:latest`)."""
        key = canonical_name(name)
        try:
            return self._cache[key]
        except KeyError:
            pass
        target = self._match(name, key)
        if len(self._cache) >= _CACHE_LIMIT:
            self._cache.clear()
        self._cache[key] = target
        return target

    def _match(self, name: str, key: str) -> Target | None:
        exact = self._exact.get(key)
        if exact is None:
            discovered = self._discovered.get(key)
            if discovered is not None:
                return discovered
        for index, prefix, suffix in self._patterns:
            if exact is not None and index > exact:
                break
            if len(key) >= len(prefix) + len(suffix) and key.startswith(prefix) and key.endswith(suffix):
                stem = strip_latest(name.strip())
                captured = stem[len(prefix) : len(stem) - len(suffix)]
                if not captured:
                    continue
                return self._target(index, captured)
        if exact is not None:
            route = self.models[exact]
            listed = route.listed_name
            if key != canonical_name(route.name):
                listed = next(tagged(alias) for alias in route.aliases if canonical_name(alias) == key)
            return self._target(exact, None, listed)
        return None

    def _target(self, index: int, captured: str | None, listed_name: str | None = None) -> Target:
        route = self.models[index]
        if route.model is not None:
            upstream_model = route.model.replace("*", captured) if captured is not None else route.model
        else:
            upstream_model = captured if captured is not None else strip_latest(route.name)
        if captured is None and listed_name is None:
            listed_name = route.listed_name
        return self.target_for(route, upstream_model, listed_name, captured)

    def target_for(self, route: ModelRoute, upstream_model: str, listed_name: str | None, captured: str | None = None) -> Target:
        """The target of an entry; for one with `targets`, its first deployment, all of them in its
        `group` (each with its own upstream, model id and quirks, merged as for one upstream)."""
        if route.targets is None:
            assert route.upstream is not None
            return self._deployment(route, route.upstream, upstream_model, listed_name, None, 1)
        group = TargetGroup(route.balance)
        targets = []
        for deployment in route.targets:
            model = deployment.model
            if model is not None and captured is not None:
                model = model.replace("*", captured)
            targets.append(self._deployment(route, deployment.upstream, model or upstream_model, listed_name, group,
                                            deployment.weight))
        group.targets = tuple(targets)
        group.current = [0] * len(targets)
        return targets[0]

    def _deployment(self, route: ModelRoute, upstream_name: str, upstream_model: str, listed_name: str | None,
                    group: TargetGroup | None, weight: int) -> Target:
        upstream = self.upstreams[upstream_name]
        quirks = PRESETS[upstream.provider].merged(upstream.quirk_overrides()).merged(route.quirk_overrides())
        return Target(
            route=route, upstream_name=upstream_name, upstream=upstream, upstream_model=upstream_model,
            quirks=quirks, listed_name=listed_name, group=group, weight=weight,
        )

    def fallback_targets(self, primary: Target) -> list[Target]:
        """The targets of the primary's `fallbacks`, in order (names that match nothing are left out)."""
        targets = []
        for name in primary.route.fallbacks:
            target = self.resolve(name)
            if target is not None:
                targets.append(target)
        return targets

    def listed_targets(self) -> list[Target]:
        """Exact entries and their aliases in file order, then discovered names: what `/api/tags` lists."""
        listed = []
        for index, route in enumerate(self.models):
            if route.is_pattern:
                continue
            listed.append(self._target(index, None))
            listed += [self._target(index, None, tagged(alias)) for alias in route.aliases]
        listed += [target for key, target in self._discovered.items() if key not in self._exact]
        return listed

    def with_discovered(self, discovered: Mapping[str, list[ModelRoute]]) -> RouteMap:
        """A copy of this map that also routes discovered models (upstream name -> its entries)."""
        copy = self.model_copy()
        copy._cache = {}
        copy._discovered = {}
        for routes in discovered.values():
            for route in routes:
                key = canonical_name(route.name)
                if key not in copy._discovered and route.first_upstream in self.upstreams:
                    copy._discovered[key] = self.target_for(route, route.model or route.name, route.listed_name)
        return copy

    @property
    def discovered_count(self) -> int:
        return len(self._discovered)

    def warnings(self) -> list[str]:
        """Problems that do not stop the gateway (shown by `check` and logged at start)."""
        return super().warnings() + self._warnings
