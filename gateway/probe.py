"""`ollama-gateway check --probe`: every upstream's `GET /models`, at once, with its key.

Each upstream is called the way discovery calls it (`upstream.calls.list_models` over its own
`UpstreamClient`: its URL, headers and key, its `connect_timeout`), bounded by its
`discover_timeout`; one line per upstream says `ok` with the latency and how many models it
listed, or `FAILED` and why (secrets masked). The exit status is 1 if any failed, and stderr
names them.
"""

from __future__ import annotations

import asyncio
import sys
import time

from gateway.cli import columns
from gateway.errors import GatewayError
from gateway.routing.resolver import RouteMap
from gateway.upstream.calls import list_models
from gateway.upstream.clients import UpstreamClient


def probe_upstreams(route_map: RouteMap) -> int:
    """GET /models on every upstream at once, with its key; a line per upstream, exit 1 if one fails."""
    results = asyncio.run(_probe_all(route_map))
    rows = [("UPSTREAM", "RESULT", "LATENCY", "DETAIL")]
    for name, (error, seconds, count) in results.items():
        detail = route_map.secrets.scrub(error) if error is not None else f"{count} model(s) listed"
        rows.append((name, "FAILED" if error is not None else "ok", f"{seconds * 1000:.0f} ms", detail))
    print()
    print("\n".join(columns(rows)))
    failed = [name for name, (error, _, _) in results.items() if error is not None]
    if failed:
        print(f"error: probe failed for upstream(s): {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


async def _probe_all(route_map: RouteMap) -> dict[str, tuple[str | None, float, int]]:
    async def one(client: UpstreamClient) -> tuple[str | None, float, int]:
        started = time.perf_counter()
        timeout = client.config.discover_timeout
        try:
            async with asyncio.timeout(timeout):
                data = await list_models(client, timeout, _PROBE_LIMIT)
        except GatewayError as exc:
            return exc.message, time.perf_counter() - started, 0
        except TimeoutError:
            return f"no answer within {timeout:g} s", time.perf_counter() - started, 0
        finally:
            await client.aclose()
        return None, time.perf_counter() - started, len(data)

    names = list(route_map.upstreams)
    clients = [UpstreamClient(name, route_map.upstreams[name], route_map.secrets) for name in names]
    return dict(zip(names, await asyncio.gather(*(one(client) for client in clients)), strict=True))


_PROBE_LIMIT = 64 * 1024 * 1024  # bytes of a model list read at most
