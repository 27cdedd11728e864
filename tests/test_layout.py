"""The package's layout holds: calls go one way down, translators do no I/O, modules stay small,
and the README's module map names every module there is (and nothing that is not).

    http/         the wire surface      imported only by app.py and cli.py (and itself)
    routing/      the map in force      never imports http
    upstream/     the calls             never imports http
    translators/  pure mapping          no http, no calls, no network or event-loop library
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "gateway"
MODULES = sorted(PACKAGE.rglob("*.py"))
_IO_LIBRARIES = {"aiohttp", "asyncio", "socket", "ssl", "anyio", "granian", "starlette", "fastapi", "httpx", "httpx2", "openai"}
_MAX_LINES = 400


def _name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    """Every module the file imports, at any depth (type-checking imports included)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


def _within(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


@pytest.mark.parametrize("path", MODULES, ids=lambda path: str(path.relative_to(PACKAGE)))
def test_calls_go_one_way_down(path: Path) -> None:
    module = _name(path)
    imported = _imports(path)
    if not (_within(module, "gateway.http") or module in ("gateway.app", "gateway.cli")):
        offending = sorted(name for name in imported if _within(name, "gateway.http"))
        assert not offending, f"{module} imports the wire surface: {offending}"
    if _within(module, "gateway.translators"):
        offending = sorted(
            name for name in imported
            if name.split(".")[0] in _IO_LIBRARIES or _within(name, "gateway.upstream") or _within(name, "gateway.http")
        )
        assert not offending, f"translator {module} reaches for I/O: {offending}"


@pytest.mark.parametrize("path", MODULES, ids=lambda path: str(path.relative_to(PACKAGE)))
def test_no_module_is_past_400_lines(path: Path) -> None:
    lines = len(path.read_text().splitlines())
    assert lines <= _MAX_LINES, f"{path.relative_to(ROOT)} has {lines} lines: look for a second concern"


def test_the_readme_module_map_names_every_module() -> None:
    """The map in the README's Development section, one line per module: `path.py  what it holds`."""
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Development", 1)[1].split("\n## ", 1)[0]
    block = section.split("```", 2)[1]
    listed: set[str] = set()
    folder = ""
    for line in block.splitlines():
        match = re.match(r"^(\s*)(\S+)\s{2,}\S", line) or re.match(r"^(\s*)(\S+/)\s*$", line)
        if not match:
            continue
        indent, entry = len(match.group(1)), match.group(2)
        if entry.endswith("/"):
            folder = entry if indent == 2 else ""
            continue
        if entry.endswith(".py"):
            listed.add(f"{folder}{entry}" if indent >= 4 else entry)
    present = {str(path.relative_to(PACKAGE)) for path in MODULES}
    # A package's __init__.py may go unlisted (its folder line says what it holds).
    required = {name for name in present if not name.endswith("__init__.py")}
    assert required <= listed, f"missing from the map: {sorted(required - listed)}"
    assert listed <= present, f"in the map but not in the package: {sorted(listed - present)}"
