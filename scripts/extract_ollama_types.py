"""Write the JSON schemas of the official ollama-python SDK's response types.

The gateway must answer in shapes that Ollama's own clients parse.  ollama-python
validates every response with pydantic models (``ollama._types``); this script
stores ``Model.model_json_schema(mode="validation")`` for each response type a
client parses, so tests can check the gateway's output against the exact shape
the SDK accepts, and notice when an SDK upgrade changes a shape.

Output (relative to the repository root):

    references/ollama-types/<TypeName>.json   one JSON schema per response type
    references/ollama-types/VERSION           the ollama SDK version they came from

Usage (from the repository root, with the project venv):

    python scripts/extract_ollama_types.py [--out references/ollama-types]

Rerun it after upgrading the ``ollama`` package; ``tests/test_ollama_types.py``
fails until the stored schemas match the installed SDK.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import sys
from pathlib import Path

import ollama._types as ollama_types

# Response types that clients parse from the server, in the order of the API.
# (The SDK also has WebSearchResponse/WebFetchResponse, which come from Ollama's
# hosted service, and SystemOneResponse, an experimental endpoint: out of scope.)
RESPONSE_TYPES = [
    "ChatResponse",
    "GenerateResponse",
    "EmbedResponse",
    "EmbeddingsResponse",
    "ListResponse",
    "ShowResponse",
    "ProcessResponse",
    "ProgressResponse",
    "StatusResponse",
]

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = REPO_ROOT / "references" / "ollama-types"


def sdk_version() -> str:
    return importlib.metadata.version("ollama")


def available_types() -> list[str]:
    """The names in RESPONSE_TYPES that exist in the installed SDK."""
    return [name for name in RESPONSE_TYPES if hasattr(ollama_types, name)]


def schema_for(name: str) -> dict:
    return getattr(ollama_types, name).model_json_schema(mode="validation")


def render(schema: dict) -> str:
    """The exact text written to disk (stable, diff-friendly)."""
    return json.dumps(schema, indent=2, ensure_ascii=False) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output folder (default: %(default)s)")
    args = parser.parse_args(argv)

    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    found = available_types()
    missing = [name for name in RESPONSE_TYPES if name not in found]
    for name in found:
        (out / f"{name}.json").write_text(render(schema_for(name)), encoding="utf-8")
    (out / "VERSION").write_text(sdk_version() + "\n", encoding="utf-8")

    print(f"ollama SDK {sdk_version()}: wrote {len(found)} schemas to {out}")
    for name in found:
        print(f"  {name}")
    if missing:
        print("not in this SDK version: " + ", ".join(missing))
    return 0


if __name__ == "__main__":
    sys.exit(main())
