"""The package's layout holds: calls go one way down, translators do no I/O, modules stay small,
and the README's module map names every module there is (and nothing that is not).

    http/         the wire surface      imported only by app.py and cli.py (and itself)
    routing/      the map in force      never imports http
    upstream/     the calls             never imports http
    translators/  pure mapping          no http, no calls, no network or event-loop library; the
                                        `openai` SDK's request types only under `if TYPE_CHECKING:`
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
    return {name for name, _ in _imported(path.read_text(), str(path))}


def _imported(source: str, filename: str = "<source>") -> list[tuple[str, bool]]:
    """(module, imported for the type checker only) for every import, at any depth; `from m import n`
    gives `m` and `m.n`. Type-checker only: in the body of an `if TYPE_CHECKING:` (not its `else`)."""
    tree = ast.parse(source, filename)
    typing_only: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            typing_only.update(id(inner) for statement in node.body for inner in ast.walk(statement))
    found: list[tuple[str, bool]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.extend((alias.name, id(node) in typing_only) for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found.append((node.module, id(node) in typing_only))
            found.extend((f"{node.module}.{alias.name}", id(node) in typing_only) for alias in node.names)
    return found


def _is_type_checking(test: ast.expr) -> bool:
    if isinstance(test, ast.Name):
        return test.id == "TYPE_CHECKING"
    return isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING" and isinstance(test.value, ast.Name) \
        and test.value.id in ("typing", "typing_extensions")


def _translator_offences(source: str, filename: str = "<source>") -> list[str]:
    """What a translator imports that is I/O, the calls or the wire surface. The one exception: the
    `openai` SDK's request types (`openai.types...`) for the type checker, the shapes translators build."""
    return sorted(
        name for name, typing_only in _imported(source, filename)
        if (name.split(".")[0] in _IO_LIBRARIES and not (typing_only and _within(name, "openai.types")))
        or _within(name, "gateway.upstream") or _within(name, "gateway.http")
    )


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
        offending = _translator_offences(path.read_text(), str(path))
        assert not offending, f"translator {module} reaches for I/O: {offending}"


_TYPES_ONLY = "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    {}\n"


@pytest.mark.parametrize(
    ("source", "offending"),
    [
        pytest.param(_TYPES_ONLY.format("from openai.types.chat import ChatCompletionMessageParam"), [], id="types-for-the-checker"),
        pytest.param("import typing\nif typing.TYPE_CHECKING:\n    import openai.types.chat\n", [], id="typing.TYPE_CHECKING"),
        pytest.param("import openai\n", ["openai"], id="import-openai"),
        pytest.param("from openai import AsyncOpenAI\n", ["openai", "openai.AsyncOpenAI"], id="the-client"),
        pytest.param("from openai.types.chat import ChatCompletionMessageParam\n",
                     ["openai.types.chat", "openai.types.chat.ChatCompletionMessageParam"], id="types-at-run-time"),
        pytest.param("def f():\n    from openai.types import Completion\n", ["openai.types", "openai.types.Completion"], id="lazy-import"),
        pytest.param(_TYPES_ONLY.format("from openai import AsyncOpenAI"), ["openai", "openai.AsyncOpenAI"], id="client-for-the-checker"),
        pytest.param(_TYPES_ONLY.format("from openai import types"), ["openai"], id="openai-package-for-the-checker"),
        pytest.param("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    pass\nelse:\n    import openai.types\n",
                     ["openai.types"], id="else-branch-runs"),
        pytest.param(_TYPES_ONLY.format("import aiohttp"), ["aiohttp"], id="other-io-for-the-checker"),
        pytest.param(_TYPES_ONLY.format("from gateway.upstream.calls import post_json"),
                     ["gateway.upstream.calls", "gateway.upstream.calls.post_json"], id="calls-for-the-checker"),
    ],
)
def test_translators_may_name_the_sdk_types_for_the_type_checker_only(source: str, offending: list[str]) -> None:
    assert _translator_offences(source) == offending


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
