"""`ollama-gateway serve` (the default) and `ollama-gateway check`."""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from gateway.http.hosts import allowed_hosts
from gateway.routing.loader import RouteMapError, load_route_map
from gateway.routing.names import strip_latest, tagged
from gateway.routing.resolver import RouteMap
from gateway.settings import Settings
from gateway.translators import BindingError, load_bindings


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    command = args.command or "serve"
    overrides = {key: value for key, value in vars(args).items() if key not in ("command", "probe") and value is not None}
    try:
        settings = Settings(**overrides)
        settings.bind_address()
        allowed_hosts(settings.allowed_hosts)  # ValueError naming an entry that is not a host name
    except (ValidationError, ValueError) as exc:
        print(f"ollama-gateway: invalid settings: {exc}", file=sys.stderr)
        return 2
    if command == "check":
        return check(settings.routes, probe=args.probe)
    return serve(settings)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ollama-gateway", description="Serve the Ollama API from OpenAI-compatible providers.")
    commands = parser.add_subparsers(dest="command")
    serve_parser = commands.add_parser("serve", help="run the gateway (default)")
    check_parser = commands.add_parser("check", help="validate routes.yaml and print the routes")
    for sub in (parser, serve_parser, check_parser):
        sub.add_argument("--routes", type=Path, default=argparse.SUPPRESS if sub is not parser else None, help="route map file (GATEWAY_ROUTES, default routes.yaml)")
    check_parser.add_argument("--probe", action="store_true",
                              help="also call each upstream's GET /models (its key, its discover_timeout); exit 1 if one fails")
    for sub in (parser, serve_parser):
        default = argparse.SUPPRESS if sub is not parser else None
        sub.add_argument("--host", default=default, help="listen address (GATEWAY_HOST, OLLAMA_HOST, default 127.0.0.1)")
        sub.add_argument("--port", type=int, default=default, help="listen port (GATEWAY_PORT, OLLAMA_HOST, default 11434)")
        sub.add_argument("--workers", type=int, default=default, help="worker processes (GATEWAY_WORKERS, default: CPU count)")
        sub.add_argument("--log-format", choices=["json", "console", "auto"], default=default, help="GATEWAY_LOG_FORMAT, default auto")
        sub.add_argument("--log-level", choices=["debug", "info", "warning", "error"], default=default, help="GATEWAY_LOG_LEVEL, default info")
    return parser


def check(routes: Path, probe: bool = False) -> int:
    """Validate the route map; print each model with its upstream, and any warning; with `probe`,
    call every upstream too."""
    try:
        route_map = load_route_map(routes)
        load_bindings(route_map.endpoints)
    except (RouteMapError, BindingError) as exc:
        message = str(exc) if isinstance(exc, RouteMapError) else f"{routes}: {exc}"
        print(f"error: {message}", file=sys.stderr)
        return 1
    print(_route_table(route_map))
    for warning in route_map.warnings():
        print(f"warning: {warning}", file=sys.stderr)
    if probe:
        from gateway.probe import probe_upstreams

        return probe_upstreams(route_map)
    return 0




def _route_table(route_map: RouteMap) -> str:
    """The models in the order names are matched, then the upstreams and the auth summary."""
    rows = [("MODEL", "UPSTREAM", "UPSTREAM MODEL", "FALLBACKS", "BASE URL")]
    for route in route_map.models:
        fallbacks = ", ".join(route.fallbacks) or "-"
        if route.is_pattern:
            name, default_model = route.name, route.model or ("<name>" if route.name == "*" else "<rest of name>")
        else:
            name, default_model = route.listed_name, route.model or strip_latest(route.name)
        several = route.targets is not None
        for position, deployment in enumerate(route.deployments):
            upstream = route_map.upstreams[deployment.upstream]
            shown = f"{deployment.upstream} (weight {deployment.weight})" if several else deployment.upstream
            model = deployment.model or default_model
            if position == 0:
                label = f"{name} ({route.balance}, {len(route.deployments)} targets)" if several else name
                rows.append((label, shown, model, fallbacks, upstream.display_url))
            else:
                rows.append((f"  target {position + 1}", shown, model, "", upstream.display_url))
        first = route_map.upstreams[route.first_upstream]
        via = f"the targets of {name}" if several else route.first_upstream
        rows += [(f"{tagged(alias)} (alias)", via, route.deployments[0].model or default_model, fallbacks, first.display_url)
                 for alias in route.aliases]
    for name, upstream in route_map.upstreams.items():
        if upstream.discover:
            rows.append((f"{upstream.prefix}<id> (discovered)", name, "<id from GET /models>", "-", upstream.display_url))
    lines = columns(rows)
    lines.append("")
    upstream_rows = [("UPSTREAM", "PROVIDER", "RETRIES", "MAX CONCURRENT", "COOLDOWN", "TIMEOUTS (connect/first token/total/idle)",
                      "DISCOVER")]
    for name, upstream in route_map.upstreams.items():
        timeouts = "/".join(
            f"{value:g}s" if value is not None else "-"
            for value in (upstream.connect_timeout, upstream.first_token_timeout, upstream.total_timeout, upstream.timeout)
        )
        discover = f"every {upstream.discover_interval:g}s as {upstream.prefix or ''}<id>" if upstream.discover else "-"
        cooldown = upstream.cooldown
        cools = f"{cooldown.seconds:g}s after {cooldown.after_failures} failures" if cooldown is not None else "off"
        limit = str(upstream.max_concurrent) if upstream.max_concurrent is not None else "-"
        upstream_rows.append((name, upstream.provider, str(upstream.max_retries), limit, cools, timeouts, discover))
    lines += columns(upstream_rows)
    lines.append("")
    if route_map.auth is None:
        lines.append("auth: off (no key is checked)")
    else:
        limited = sum(1 for key in route_map.auth.keys if "*" not in key.models)
        lines.append(f"auth: on, {len(route_map.auth.keys)} key(s), {limited} limited to some models")
        key_rows = [("KEY", "MODELS", "LIMITS")]  # the keys by position, never the key itself
        for number, key in enumerate(route_map.auth.keys, 1):
            limits = key.limits.describe() if key.limits is not None else "none"
            key_rows.append((f"#{number}", ", ".join(key.models), limits))
        lines += ["  " + line for line in columns(key_rows)]
    lines.append("names: exact names and aliases first, then discovered names, then the first matching pattern "
                 "(a pattern listed before an exact name wins over it)")
    return "\n".join(lines)


def columns(rows: Sequence[tuple[str, ...]]) -> list[str]:
    widths = [max(len(row[column]) for row in rows) for column in range(len(rows[0]) - 1)]
    return ["  ".join(cell.ljust(width) for cell, width in zip(row[:-1], widths, strict=True)) + "  " + row[-1] for row in rows]


# Seconds between the end of the grace period and Granian killing a worker that is still busy:
# time for the app to write its last error lines and close.
_KILL_MARGIN = 5


def serve(settings: Settings) -> int:
    """Run the app on Granian; each worker rebuilds the settings from the exported environment.

    On SIGTERM, after `shutdown_delay` seconds of failing readiness while still serving (none by
    default), Granian stops accepting connections and waits for requests in flight; the app
    ends what is left after `shutdown_grace` seconds (guard.Drain), and Granian kills a worker
    still alive a few seconds later. Headers beyond `max_header_bytes`, or more than 100 of them,
    get 431 from Granian (hyper) before the app sees the request, and a connection that has not
    sent a request's headers `header_timeout` seconds after its connect or its previous response
    is closed (hyper's one timer for both). Each worker serves up to `max_connections` at once,
    on a listening socket the master keeps for its slot (listener.py). A worker that dies
    (killed, out of memory, a crash in native code) is replaced at once while the others keep
    serving; one that dies again within about five seconds of its respawn ends the gateway
    (Granian's crash-loop guard: a worker that cannot start at all).
    """
    from gateway.listener import files_needed, raise_open_file_limit


    try:
        route_map = load_route_map(settings.routes)
        load_bindings(route_map.endpoints)
    except (RouteMapError, BindingError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    warning = raise_open_file_limit(files_needed(settings.max_connections, settings.max_concurrent_upstream))
    if warning:
        print(f"ollama-gateway: warning: {warning}", file=sys.stderr)
    os.environ.update(settings.to_environ())
    # prometheus-client's multi-process mode (metrics.py): the workers' value files, fresh for
    # this run (stale files would add an earlier run's counts), removed when the server is over.
    metrics_dir = tempfile.mkdtemp(prefix="ollama-gateway-metrics-")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir
    # The workers' shared state without Redis (upstream/localstate.py), fresh for this run too.
    state_dir = tempfile.mkdtemp(prefix="ollama-gateway-state-")
    os.environ["GATEWAY_STATE_DIR"] = state_dir
    host, port = settings.bind_address()
    options: dict[str, Any] = {
        "address": host,
        "port": port,
        "interface": "asgi",
        "workers": settings.workers,
        "factory": True,
        "loop": "uvloop",
        "http": "1",
        "log_access": False,
        "log_level": settings.log_level,
        "http1_settings": {
            "max_buffer_size": settings.max_header_bytes, "header_read_timeout": math.ceil(settings.header_timeout * 1000),
        },
        "backlog": settings.backlog,
        "backpressure": settings.max_connections,
        "respawn_failed_workers": True,
        "workers_kill_timeout": math.ceil(settings.shutdown_grace) + _KILL_MARGIN,
    }
    plan = {
        "target": "gateway.app:create_app", "tcp_keepalive": settings.tcp_keepalive, "options": options,
        "shutdown_delay": settings.shutdown_delay, "metrics_dir": metrics_dir, "state_dir": state_dir,
    }
    # The master that stays resident starts afresh, importing only what it runs (master.py).
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(sys.executable, [sys.executable, "-m", "gateway.master", json.dumps(plan)])
