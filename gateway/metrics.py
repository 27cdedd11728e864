"""Prometheus metrics, counted over every Granian worker of a replica.

`ollama-gateway serve` makes a fresh private directory per run before Granian forks the workers,
exports it as `PROMETHEUS_MULTIPROC_DIR` and removes it at exit (cli.py): prometheus-client's
multi-process mode then keeps each worker's values in memory-mapped files there, and a scrape
on any worker (`render`) adds up the files of all of them. Without that variable (the app built
in-process) the values are the process's own.

Imported by the workers only, on first use (the Granian master never loads prometheus-client).
Every label is bounded: `model` is the name of the routed entry (a pattern's own name, `fake/*`,
not what the client asked for; `unrouted` when no entry matched), `endpoint` a route's path
template, `upstream` a name in routes.yaml.

    observe_request(record)        once per request, where the summary line is written (front.py)
    attempt(upstream, outcome)     every upstream try, retries and fallbacks included (exchange.py)
    stream_opened() / _closed()    gateway_streams_in_flight (streaming.py)
    reloaded(result)               gateway_route_map_reloads_total (routing/live.py)
"""

from __future__ import annotations

import glob
import os
import re
import time
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client import multiprocess, values

from gateway.logs import RequestRecord


def _process_id() -> int:
    return _pid


def _forked() -> None:
    global _pid
    _pid = os.getpid()


# prometheus-client asks for the pid at every write, to notice a fork (about 1 us a call, a
# system call nine times per request); the pid kept here, refreshed by a fork hook, does the same.
_pid = os.getpid()
os.register_at_fork(after_in_child=_forked)
if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
    values.ValueClass = values.MultiProcessValue(_process_id)  # type: ignore[no-untyped-call]  # unannotated

MEDIA_TYPE = CONTENT_TYPE_LATEST
NO_MODEL = "none"  # an endpoint that names no model (/api/tags)
UNROUTED = "unrouted"  # a model name no entry matched: never the client's own string
NO_UPSTREAM = "none"

# Seconds: the request as a whole and its first chunk (a few ms of local answers to minutes of
# long generations), and the gateway's own share (tens of microseconds to a few ms).
_DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, float("inf"))
_OVERHEAD_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1, float("inf"))

REQUESTS = Counter(
    "gateway_requests", "Requests answered, by endpoint (route template), routed model, upstream and status.",
    ["endpoint", "model", "upstream", "status"],
)
DURATION = Histogram(
    "gateway_request_duration_seconds", "From the request's arrival to its response's last byte.",
    ["endpoint"], buckets=_DURATION_BUCKETS,
)
FIRST_CHUNK = Histogram(
    "gateway_time_to_first_chunk_seconds", "Streamed responses: from the request's arrival to the first body byte sent.",
    ["endpoint", "model"], buckets=_DURATION_BUCKETS,
)
OVERHEAD = Histogram(
    "gateway_overhead_seconds", "The time the gateway added: the request's duration minus the time spent waiting on the upstream.",
    ["endpoint"], buckets=_OVERHEAD_BUCKETS,
)
TOKENS = Counter(
    "gateway_tokens", "Tokens the upstreams reported, by routed model, upstream and kind (prompt, completion).",
    ["model", "upstream", "kind"],
)
ATTEMPTS = Counter(
    "gateway_upstream_attempts", "Every try of an upstream (retries and fallbacks included), by outcome: ok, timeout, error.",
    ["upstream", "outcome"],
)
STREAMS = Gauge(
    "gateway_streams_in_flight", "Streamed responses being written now (summed over the live workers).",
    multiprocess_mode="livesum",
)
RELOADS = Counter(
    "gateway_route_map_reloads", "routes.yaml reloads in each worker, by result: ok, rejected.", ["result"],
)

_NS = 1e-9
_stream_gauge = STREAMS


def observe_request(record: RequestRecord, endpoint: str) -> None:
    """Count one finished request (called where its summary line is written)."""
    now = time.perf_counter_ns()
    total = (now - record.started) * _NS
    model = record.route or (UNROUTED if record.model is not None else NO_MODEL)
    upstream = (record.upstream if record.route else None) or NO_UPSTREAM
    _child(REQUESTS, (endpoint, model, upstream, str(record.status))).inc()
    _child(DURATION, (endpoint,)).observe(total)
    _child(OVERHEAD, (endpoint,)).observe(max(total - record.upstream_wait_ns(now) * _NS, 0.0))
    if record.chunks and record.first_byte:
        _child(FIRST_CHUNK, (endpoint, model)).observe((record.first_byte - record.started) * _NS)
    if record.prompt_tokens:
        _child(TOKENS, (model, upstream, "prompt")).inc(record.prompt_tokens)
    if record.completion_tokens:
        _child(TOKENS, (model, upstream, "completion")).inc(record.completion_tokens)


def attempt(upstream: str, outcome: str) -> None:
    _child(ATTEMPTS, (upstream, outcome)).inc()


# Each metric's children by label values: `labels()` validates and locks at every call (about
# 1.7 us each), a dict lookup does not. As bounded as the labels themselves.
_children: dict[tuple[object, tuple[str, ...]], Any] = {}


def _child(metric: Counter | Histogram, key: tuple[str, ...]) -> Any:
    child = _children.get((metric, key))
    if child is None:
        child = _children[(metric, key)] = metric.labels(*key)
    return child


def stream_opened() -> None:
    _stream_gauge.inc()


def stream_closed() -> None:
    _stream_gauge.dec()


def reloaded(result: str) -> None:
    RELOADS.labels(result).inc()


def render() -> bytes:
    """The text exposition of the whole replica (every worker's files) or of this process."""
    directory = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if not directory:
        return generate_latest(REGISTRY)
    forget_dead_workers(directory)
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry, path=directory)  # type: ignore[no-untyped-call]  # prometheus-client leaves it unannotated
    return generate_latest(registry)


_LIVE_FILE = re.compile(r"gauge_live\w*?_(\d+)\.db$")


def forget_dead_workers(directory: str) -> None:
    """Drop the live-gauge files of workers that are gone (`multiprocess.mark_process_dead`).

    A worker Granian respawns leaves its files behind: its counters and histograms still count
    (they are what it served), but its share of a `livesum` gauge must not. Done at each scrape
    rather than in the master, which keeps prometheus-client out of the master process.
    """
    dead = set()
    for path in glob.glob(os.path.join(directory, "gauge_live*_*.db")):
        match = _LIVE_FILE.search(path)
        if match is not None and not _alive(int(match.group(1))):
            dead.add(int(match.group(1)))
    for pid in dead:
        multiprocess.mark_process_dead(pid, directory)  # type: ignore[no-untyped-call]  # unannotated too


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
