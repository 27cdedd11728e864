"""Process settings: command-line flags, then `GATEWAY_*` environment, then defaults.

`OLLAMA_HOST` (Ollama's own variable: `host:port`, `host`, `:port` or `http://host:port`) is
honoured when neither a flag nor `GATEWAY_HOST`/`GATEWAY_PORT` says where to listen, so an
existing Ollama setup keeps its address.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from pydantic import AliasChoices, Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 11434
# The Ollama release whose API surface the gateway serves (capabilities in /api/tags: 0.30.0).
DEFAULT_OLLAMA_VERSION = "0.30.0"


class Settings(BaseSettings):
    """Everything a gateway process needs to know besides the route map itself."""

    model_config = SettingsConfigDict(env_prefix="GATEWAY_", extra="ignore")

    routes: Path = Path("routes.yaml")
    host: str | None = None
    port: int | None = Field(default=None, ge=0, le=65535)
    workers: int = Field(default_factory=lambda: os.cpu_count() or 1, ge=1)
    log_format: Literal["json", "console", "auto"] = "auto"
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    ollama_version: str = Field(default=DEFAULT_OLLAMA_VERSION, pattern=r"^\d+\.\d+\.\d+$")
    ollama_host: str | None = Field(default=None, validation_alias="OLLAMA_HOST")
    # Extra CORS origins, comma-separated, as Ollama's OLLAMA_ORIGINS (see http/cors.py).
    origins: str = Field(default="", validation_alias=AliasChoices("GATEWAY_ORIGINS", "OLLAMA_ORIGINS"))
    # Extra `Host` names the gateway answers to, comma-separated; `*` turns the check off (hosts.py).
    allowed_hosts: str = ""
    # Limits (upstream/limiter.py, http/guard.py, cli.serve). Per worker: upstream requests at once (a stream
    # holds its slot until it ends), and how long a request waits for a slot before its 503.
    max_concurrent_upstream: int = Field(default=1024, ge=1)
    queue_timeout: float = Field(default=10.0, ge=0)
    # Large enough for several base64 images in one chat request.
    max_body_bytes: int = Field(default=64 * 1024 * 1024, ge=1024)
    max_json_depth: int = Field(default=64, ge=4, le=200)
    # What one parsed body may hold, checked before validation builds an object per item (a
    # million tiny messages would stall the worker for seconds): chat messages, embedding
    # inputs (OpenAI's own limit per request), and JSON values in all (array elements plus
    # object members, at any depth).
    max_messages: int = Field(default=10_000, ge=1)
    max_inputs: int = Field(default=2048, ge=1)
    max_json_items: int = Field(default=250_000, ge=1000)
    # A non-streamed upstream answer is read whole before it is translated; beyond this, 502.
    # Room for the largest real one: 2048 embeddings of 3072 floats, ~200 MB as OpenAI formats it.
    max_upstream_answer_bytes: int = Field(default=256 * 1024 * 1024, ge=64 * 1024)
    # The request line plus headers (Granian's HTTP/1 buffer; it answers 431 beyond it).
    max_header_bytes: int = Field(default=64 * 1024, ge=8192)
    # Seconds in-flight requests get to finish after SIGTERM; keep it below the orchestrator's
    # own kill timeout (Kubernetes: terminationGracePeriodSeconds, 30 by default).
    shutdown_grace: float = Field(default=25.0, ge=0, le=1800)
    # Seconds between SIGTERM and the drain: /health/ready says 503 while requests are still
    # served, so a load balancer polling it stops sending first (master.DelayedStop). 0: none
    # (Kubernetes: a preStop pause does the same).
    shutdown_delay: float = Field(default=0.0, ge=0, le=600)
    # Connections (cli.serve, listener.py, http/guard.py). Connections each worker serves at once
    # (Granian's backpressure; more wait in the worker's listen queue, `backlog` long); it must
    # exceed `max_concurrent_upstream`, or the limiter's 503 is never reached.
    max_connections: int = Field(default=4096, ge=2)
    backlog: int = Field(default=2048, ge=128)
    # Seconds a connection may take to send a request's headers, counted from its connect and, on a
    # kept-alive connection, from the end of the previous response: the keep-alive idle timeout too.
    header_timeout: float = Field(default=30.0, gt=0, le=3600)
    # Seconds a request body may take to arrive whole (408 after), and a response write may wait on
    # a client that stopped reading (the request is ended and its upstream slot freed).
    body_timeout: float = Field(default=60.0, gt=0)
    send_timeout: float = Field(default=60.0, gt=0)
    # Seconds of silence before an accepted connection is probed (TCP keepalive; 0 turns it off).
    tcp_keepalive: int = Field(default=60, ge=0, le=32767)
    # Log prompts and completions (one `content` line per request). For debugging; off by default.
    log_content: bool = False
    # A path prefix the whole API is served under as well as at the root (`/ollama`), for a
    # reverse proxy that does not strip it (http/prefix.py). A trailing slash is ignored.
    root_path: str = ""
    # Shared state (upstream/sharedstate.py): per-key limits, `max_concurrent` leases, cooldowns.
    # With a Redis (or Valkey) URL, shared by every worker of every replica; without one, by the
    # workers of this machine, through the state directory `serve` makes for the run (it sets
    # GATEWAY_STATE_DIR itself; made outside `serve`, the app keeps its state in memory).
    redis_url: str | None = None
    state_dir: Path | None = None

    @field_validator("root_path")
    @classmethod
    def _root_path_shape(cls, value: str) -> str:
        value = value.strip().rstrip("/")
        if value and not re.fullmatch(r"(/[A-Za-z0-9._~!$&'()*+,;=:@%-]+)+", value):
            raise ValueError(f"GATEWAY_ROOT_PATH must be a path such as /ollama, not {value!r}")
        return value

    @model_validator(mode="after")
    def _connections_above_upstream(self) -> Settings:
        if self.max_connections <= self.max_concurrent_upstream:
            raise ValueError(
                f"GATEWAY_MAX_CONNECTIONS ({self.max_connections}) must be above GATEWAY_MAX_CONCURRENT_UPSTREAM "
                f"({self.max_concurrent_upstream}): a request waiting for an upstream slot holds a connection too"
            )
        return self

    def bind_address(self) -> tuple[str, int]:
        """Where to listen: explicit settings first, then `OLLAMA_HOST`, then 127.0.0.1:11434."""
        host, port = parse_ollama_host(self.ollama_host or "")
        return self.host or host, self.port if self.port is not None else port

    def to_environ(self) -> dict[str, str]:
        """The `GATEWAY_*` variables that rebuild these settings in a worker process."""
        host, port = self.bind_address()
        return {
            "GATEWAY_ROUTES": str(self.routes),
            "GATEWAY_HOST": host,
            "GATEWAY_PORT": str(port),
            "GATEWAY_WORKERS": str(self.workers),
            "GATEWAY_LOG_FORMAT": self.log_format,
            "GATEWAY_LOG_LEVEL": self.log_level,
            "GATEWAY_OLLAMA_VERSION": self.ollama_version,
        } | ({"GATEWAY_ORIGINS": self.origins} if self.origins else {}) | self._limits_environ()

    def _limits_environ(self) -> dict[str, str]:
        names = (
            "max_concurrent_upstream", "queue_timeout", "max_body_bytes", "max_json_depth", "max_header_bytes",
            "shutdown_grace", "shutdown_delay", "log_content", "allowed_hosts", "max_messages", "max_inputs", "max_json_items",
            "max_upstream_answer_bytes", "max_connections", "backlog", "header_timeout", "body_timeout",
            "send_timeout", "tcp_keepalive", "root_path",
        )
        optional = {"GATEWAY_REDIS_URL": self.redis_url} if self.redis_url else {}
        return {f"GATEWAY_{name.upper()}": str(getattr(self, name)) for name in names} | optional


def parse_ollama_host(value: str) -> tuple[str, int]:
    """Read `OLLAMA_HOST` the way Ollama does; missing parts take the defaults."""
    value = value.strip()
    # As Ollama's envconfig.Host: a bare host:port defaults to 11434, an explicit scheme to its
    # own port (http 80, https 443).
    default_port = DEFAULT_PORT
    if "://" in value:
        default_port = {"http": 80, "https": 443}.get(value.split("://", 1)[0].lower(), DEFAULT_PORT)
    else:
        value = "http://" + value
    parts = urlsplit(value)
    try:
        port = parts.port
    except ValueError as exc:
        raise ValueError(f"OLLAMA_HOST: invalid port in {value!r}") from exc
    return parts.hostname or DEFAULT_HOST, port if port is not None else default_port
