"""What is measured: the targets (direct upstream, gateway, the floor, ollama-openai-proxy) and the
request bytes plus validity check each one gets for each scenario."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import bench_checks as checks
import bench_fixtures as fx
from bench_checks import Check
from bench_client import build_request
from bench_procs import Service, pip_install_venv, start_service, wait_ready

PROXY_REQUIREMENT = "ollama-openai-proxy==0.7.0"
MESSAGES = [{"role": "user", "content": "Say hello to the benchmark."}]


@dataclass
class Target:
    """Something the load generator talks to.

    `api` is "openai" for the direct path (client -> fake upstream) and "ollama" for the
    gateways; `server` is the process whose CPU and memory are charged to the target;
    `start` (None for the upstream) starts a fresh server on the same port.
    """

    name: str
    label: str
    api: str
    server: Service
    start: Callable[[], Service] | None = None

    def restart(self) -> None:
        """Replace the server with a fresh process (no-op for targets without `start`)."""
        if self.start is not None:
            self.server.stop()
            self.server = self.start()

    @property
    def port(self) -> int:
        """Where it listens."""
        return self.server.port

    def chat(self) -> tuple[bytes, Check]:
        """A non-streamed chat request and its check."""
        model = fx.CHAT_MODEL
        if self.api == "openai":
            body: dict[str, object] = {"model": model, "messages": MESSAGES}
            return self._post("/v1/chat/completions", body), checks.direct_chat_check(model)
        body = {"model": model, "messages": MESSAGES, "stream": False}
        return self._post("/api/chat", body), checks.ollama_chat_check(model)

    def stream(self, chunks: int, slow: bool = False) -> tuple[bytes, Check]:
        """A streamed chat request of `chunks` content chunks (100 ms apart if `slow`)."""
        model = fx.slow_model(chunks) if slow else fx.stream_model(chunks)
        if self.api == "openai":
            body: dict[str, object] = {"model": model, "messages": MESSAGES, "stream": True,
                                       "stream_options": {"include_usage": True}}
            return self._post("/v1/chat/completions", body), checks.direct_stream_check(model, chunks)
        body = {"model": model, "messages": MESSAGES, "stream": True}
        return self._post("/api/chat", body), checks.ollama_stream_check(model, chunks)

    def embed(self, count: int = fx.EMBED_INPUTS) -> tuple[bytes, Check]:
        """An embedding request for `count` inputs."""
        model = fx.EMBED_MODEL
        body: dict[str, object] = {"model": model, "input": fx.embed_inputs(count)}
        if self.api == "openai":
            return self._post("/v1/embeddings", body), checks.direct_embed_check(model, count)
        return self._post("/api/embed", body), checks.ollama_embed_check(model, count)

    def _post(self, path: str, body: dict[str, object]) -> bytes:
        headers = [f"Authorization: Bearer {fx.API_KEY}"] if self.api == "openai" else []
        return build_request("POST", path, self.port, fx.dumps(body), headers)


def start_upstream(port: int, log_dir: Path, cores: set[int] | None) -> Service:
    """The fake OpenAI-compatible upstream (`bench_upstream.py`)."""
    script = Path(__file__).with_name("bench_upstream.py")
    service = start_service("upstream", [sys.executable, str(script), "--port", str(port)], port, log_dir, cores)
    try:
        wait_ready_with_key(service)
    except BaseException:
        service.stop()
        raise
    return service


def wait_ready_with_key(service: Service, timeout_s: float = 20.0) -> None:
    """Readiness for the upstream, whose every route wants the API key."""
    import time
    import urllib.request

    deadline = time.monotonic() + timeout_s
    request = urllib.request.Request(f"http://127.0.0.1:{service.port}/v1/models",
                                     headers={"Authorization": f"Bearer {fx.API_KEY}"})
    while time.monotonic() < deadline:
        if service.process.poll() is not None:
            raise RuntimeError(f"upstream exited:\n{service.log_tail()}")
        try:
            with urllib.request.urlopen(request, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"upstream not ready:\n{service.log_tail()}")


def find_gateway_command(explicit: str | None) -> list[str] | None:
    """The `ollama-gateway` command: --gateway-bin, next to this Python, or `python -m gateway`."""
    if explicit:
        return [explicit]
    beside = Path(sys.executable).with_name("ollama-gateway")
    if beside.exists():
        return [str(beside)]
    repo = Path(__file__).resolve().parent.parent
    if (repo / "gateway" / "cli.py").exists():
        return [sys.executable, "-m", "gateway"]
    return None


def write_routes(log_dir: Path, upstream_port: int) -> Path:
    """The route map the gateway serves: every model to the fake upstream."""
    path = log_dir / "bench-routes.yaml"
    path.write_text(
        "upstreams:\n"
        "  fake:\n"
        f"    base_url: http://127.0.0.1:{upstream_port}/v1\n"
        f"    api_key: {fx.API_KEY}\n"
        "models:\n"
        '  - name: "*"\n'
        "    upstream: fake\n"
    )
    return path


def start_gateway(command: list[str], routes: Path, port: int, workers: int, log_dir: Path,
                  cores: set[int] | None, name: str) -> Service:
    """`ollama-gateway serve` with the bench route map; waits for "Ollama is running"."""
    argv = [*command, "serve", "--routes", str(routes), "--host", "127.0.0.1", "--port", str(port),
            "--workers", str(workers), "--log-format", "json", "--log-level", "warning"]
    repo = Path(__file__).resolve().parent.parent
    service = start_service(name, argv, port, log_dir, cores, cwd=repo)
    try:
        wait_ready(service, "/", "Ollama is running", timeout_s=60)
    except BaseException:
        service.stop()
        raise
    return service


def start_floor(port: int, upstream_port: int, log_dir: Path, cores: set[int] | None) -> Service:
    """The floor (`bench_floor.py`) under the Granian CLI with the options `gateway.cli.serve` passes
    Granian (kept in step by hand), one worker, from the same directory and pinned to the same cores.

    The Granian master does not import the app, like the gateway's.
    """
    beside = Path(sys.executable).with_name("granian")
    granian = [str(beside)] if beside.exists() else [sys.executable, "-m", "granian"]
    argv = [*granian, "--interface", "asgi", "--factory", "--loop", "uvloop", "--http", "1", "--workers", "1",
            "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning", "--no-access-log",
            "--http1-buffer-size", str(64 * 1024), "--workers-kill-timeout", "30",
            "--working-dir", str(Path(__file__).resolve().parent), "bench_floor:create_app"]
    env = {"FLOOR_UPSTREAM": f"http://127.0.0.1:{upstream_port}/v1", "FLOOR_API_KEY": fx.API_KEY}
    service = start_service("floor", argv, port, log_dir, cores, env=env, cwd=Path(__file__).resolve().parent.parent)
    try:
        wait_ready(service, "/", "Ollama is running", timeout_s=60)
    except BaseException:
        service.stop()
        raise
    return service


@dataclass
class ProxyInstall:
    """ollama-openai-proxy in its scratch venv, plus the `src` shim directory for PYTHONPATH."""

    python: Path
    shim_dir: Path
    version: str


def ensure_proxy(cache_dir: Path) -> ProxyInstall:
    """Install ollama-openai-proxy 0.7.0 into `cache_dir/proxy-venv` (once) and build the shim.

    Its wheel installs its modules at the top level of site-packages but imports them as
    `src.*`; a directory holding a `src` symlink to that site-packages, put on PYTHONPATH,
    makes `uvicorn src.main:app` work.
    """
    import subprocess

    cache_dir.mkdir(parents=True, exist_ok=True)
    venv = cache_dir / "proxy-venv"
    python = venv / "bin" / "python"
    probe = "import importlib.metadata as m; print(m.version('ollama-openai-proxy'))"
    version = ""
    if python.exists():
        found = subprocess.run([str(python), "-c", probe], capture_output=True, text=True, check=False)
        version = found.stdout.strip() if found.returncode == 0 else ""
    if version != PROXY_REQUIREMENT.split("==")[1]:
        print(f"installing {PROXY_REQUIREMENT} into {venv} ...", file=sys.stderr, flush=True)
        pip_install_venv(venv, PROXY_REQUIREMENT, cache_dir / "pip.log")
        version = subprocess.run([str(python), "-c", probe], capture_output=True, text=True, check=True).stdout.strip()
    site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    shim = cache_dir / "proxy-shim"
    shim.mkdir(exist_ok=True)
    link = shim / "src"
    if not link.is_symlink() or os.readlink(link) != site:
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to(site)
    return ProxyInstall(python, shim, version)


def start_proxy(install: ProxyInstall, port: int, upstream_port: int, log_dir: Path,
                cores: set[int] | None) -> Service:
    """ollama-openai-proxy under uvicorn (uvloop + httptools), one process, logs at WARNING.

    Configured through its environment variables (OPENAI_API_BASE_URL, OPENAI_API_KEY,
    LOG_LEVEL); run from the shim directory so no stray `.env` is read.
    """
    argv = [str(install.python), "-m", "uvicorn", "src.main:app", "--host", "127.0.0.1", "--port", str(port),
            "--log-level", "warning", "--no-access-log"]
    env = {
        "PYTHONPATH": str(install.shim_dir),
        "OPENAI_API_BASE_URL": f"http://127.0.0.1:{upstream_port}/v1",
        "OPENAI_API_KEY": fx.API_KEY,
        "LOG_LEVEL": "WARNING",
    }
    service = start_service("ollama-openai-proxy", argv, port, log_dir, cores, env=env, cwd=install.shim_dir)
    try:
        wait_ready(service, "/health", "healthy", timeout_s=60)
    except BaseException:
        service.stop()
        raise
    return service
