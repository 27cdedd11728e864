"""routes.yaml loading and name resolution, from real files in tmp_path (no gateway, no network)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from gateway.routing.keys import Grant, KeyChecker
from gateway.cli import main
from gateway.routing.discovery import context_length_of, discovered_routes
from gateway.routing.loader import RouteMapError, load_route_map
from gateway.routing.resolver import RouteMap

UPSTREAMS = """
upstreams:
  a: {base_url: "http://127.0.0.1:9/v1"}
  b: {base_url: "http://127.0.0.1:10/v1", discover: true, prefix: "b/"}
"""


def load(tmp_path: Path, text: str, environ: dict[str, str] | None = None) -> RouteMap:
    path = tmp_path / "routes.yaml"
    path.write_text(text)
    return load_route_map(path, environ or {})


def test_aliases_name_the_same_entry_and_are_listed_with_a_tag(tmp_path: Path) -> None:
    routes = load(tmp_path, UPSTREAMS + """
models:
  - {name: gpt-4o, aliases: [gpt4, "Fast:2"], upstream: a, model: gpt-4o-2024}
""")
    targets = [routes.resolve(name) for name in ("gpt-4o", "GPT4:latest", "fast:2")]
    assert all(target is not None and target.upstream_model == "gpt-4o-2024" for target in targets)
    assert [target.listed_name for target in targets if target] == ["gpt-4o:latest", "gpt4:latest", "Fast:2"]
    assert [target.listed_name for target in routes.listed_targets()] == ["gpt-4o:latest", "gpt4:latest", "Fast:2"]
    assert routes.resolve("fast") is None, "a tag other than latest is part of the name"


def test_an_alias_may_not_reuse_a_name(tmp_path: Path) -> None:
    with pytest.raises(RouteMapError, match=r"models\[1\] \('two'\): 'ONE' is already a name of models\[0\]"):
        load(tmp_path, UPSTREAMS + "models:\n  - {name: one, upstream: a}\n  - {name: two, aliases: [ONE], upstream: a}\n")


def test_a_pattern_takes_no_aliases(tmp_path: Path) -> None:
    with pytest.raises(RouteMapError, match="aliases need an exact name"):
        load(tmp_path, UPSTREAMS + "models:\n  - {name: 'x/*', aliases: [y], upstream: a}\n")


@pytest.mark.parametrize(
    ("name", "upstream_model"),
    [
        pytest.param("openrouter/meta/llama-3:latest", "meta/llama-3", id="latest-stripped"),
        pytest.param("OpenRouter/deepseek/r1:free", "deepseek/r1:free", id="other-tag-kept-prefix-any-case"),
        pytest.param("anything-else", "anything-else", id="catch-all"),
    ],
)
def test_patterns_pass_the_rest_of_the_name(tmp_path: Path, name: str, upstream_model: str) -> None:
    routes = load(tmp_path, UPSTREAMS + "models:\n  - {name: 'openrouter/*', upstream: a}\n  - {name: '*', upstream: b}\n")
    target = routes.resolve(name)
    assert target is not None and target.upstream_model == upstream_model and target.listed_name is None


def test_first_match_wins_between_patterns_and_exact_names(tmp_path: Path) -> None:
    routes = load(tmp_path, UPSTREAMS + """
models:
  - {name: 'early/*', upstream: a}
  - {name: early/x, upstream: b}
  - {name: late/x, upstream: a}
  - {name: 'late/*', upstream: b}
""")
    assert routes.resolve("early/x").upstream_name == "a"  # type: ignore[union-attr]
    assert routes.resolve("late/x").upstream_name == "a"  # type: ignore[union-attr]
    assert routes.resolve("late/y").upstream_name == "b"  # type: ignore[union-attr]


def test_resolution_is_cached_per_name_any_case(tmp_path: Path) -> None:
    routes = load(tmp_path, UPSTREAMS + "models:\n  - {name: tiny, upstream: a}\n")
    assert routes.resolve("tiny") is routes.resolve("TINY:latest")


def test_discovered_names_route_after_exact_names_and_before_patterns(tmp_path: Path) -> None:
    routes = load(tmp_path, UPSTREAMS + """
models:
  - {name: b/pinned, upstream: a, model: pinned-elsewhere}
  - {name: '*', upstream: a}
""")
    config = routes.upstreams["b"]
    listed = discovered_routes("b", config, [{"id": "m1", "context_length": 8192}, {"id": "pinned"}, {"id": "emb-embed-1"}])
    assert routes.resolve("b/m1").upstream_name == "a", "before discovery the catch-all serves it"  # type: ignore[union-attr]
    merged = routes.with_discovered({"b": listed})
    m1 = merged.resolve("B/M1:latest")
    assert m1 is not None and (m1.upstream_name, m1.upstream_model, m1.listed_name) == ("b", "m1", "b/m1:latest")
    assert m1.route.context_length == 8192
    assert merged.resolve("b/pinned").upstream_model == "pinned-elsewhere"  # type: ignore[union-attr]
    names = [target.listed_name for target in merged.listed_targets()]
    assert names == ["b/pinned:latest", "b/m1:latest", "b/emb-embed-1:latest"]
    assert merged.resolve("b/emb-embed-1").route.capability_list == ["embedding"]  # type: ignore[union-attr]
    assert routes.resolve("b/m1").upstream_name == "a", "the map it was made from is unchanged"  # type: ignore[union-attr]


def test_discovery_reads_each_providers_context_window() -> None:
    assert [context_length_of(entry) for entry in (
        {"context_length": 1}, {"top_provider": {"context_length": 2}}, {"context_window": 3},
        {"max_model_len": 4}, {"meta": {"n_ctx_train": 5}}, {"context_length": True},
    )] == [1, 2, 3, 4, 5, None]


def test_a_fallback_must_name_a_model(tmp_path: Path) -> None:
    text = "upstreams:\n  a: {base_url: 'http://127.0.0.1:9/v1'}\nmodels:\n  - {name: one, upstream: a, fallbacks: [nowhere]}\n"
    with pytest.raises(RouteMapError, match=r"models\[0\] \('one'\): fallback 'nowhere' matches no entry"):
        load(tmp_path, text)


def test_a_fallback_may_wait_for_discovery(tmp_path: Path) -> None:
    routes = load(tmp_path, UPSTREAMS + "models:\n  - {name: one, upstream: a, fallbacks: [b/later, 'two']}\n  - {name: two, upstream: b}\n")
    assert any("fallback 'b/later'" in warning for warning in routes.warnings())
    primary = routes.resolve("one")
    assert primary is not None and [t.route.name for t in routes.fallback_targets(primary)] == ["two"]


def test_new_upstream_keys_have_safe_defaults(tmp_path: Path) -> None:
    routes = load(tmp_path, UPSTREAMS + "models: []\n")
    a = routes.upstreams["a"]
    assert (a.max_retries, a.connect_timeout, a.first_token_timeout, a.total_timeout, a.discover) == (2, 10.0, None, None, False)
    assert (a.auth_header, a.pass_client_key, a.query) == ("Authorization", False, {})


def test_azure_deployment_shape_is_accepted(tmp_path: Path) -> None:
    routes = load(tmp_path, """
upstreams:
  azure:
    provider: azure
    base_url: https://${AZURE_RESOURCE:-example}.openai.azure.com/openai/deployments/gpt-4o
    api_key: ${AZURE_OPENAI_API_KEY}
    auth_header: api-key
    query: {api-version: "2024-10-21"}
models:
  - {name: azure-gpt-4o, upstream: azure}
""")
    azure = routes.upstreams["azure"]
    assert azure.base_url == "https://example.openai.azure.com/openai/deployments/gpt-4o"
    assert azure.query == {"api-version": "2024-10-21"} and azure.auth_header == "api-key"
    assert "AZURE_OPENAI_API_KEY" in routes.warnings()[0]


def test_an_empty_optional_key_is_no_key(tmp_path: Path) -> None:
    routes = load(tmp_path, "upstreams:\n  a: {base_url: 'http://127.0.0.1:9/v1', api_key: '${LOCAL_KEY:-}'}\n")
    assert routes.upstreams["a"].api_key is None and routes.warnings() == []


def test_auth_key_whose_variable_is_unset_lets_nobody_in(tmp_path: Path) -> None:
    routes = load(tmp_path, UPSTREAMS + """
auth:
  keys:
    - {key: "${GATEWAY_KEY_ONE}"}
    - {key: "${GATEWAY_KEY_TWO}", models: ["gpt-*", tiny]}
""", {"GATEWAY_KEY_TWO": "second-key-123"})
    assert routes.auth is not None
    assert any("GATEWAY_KEY_ONE" in warning and "lets nobody in" in warning for warning in routes.warnings())
    checker = KeyChecker(routes.auth)
    assert checker.check(b"Bearer ") is None and checker.check(None) is None and checker.check(b"Basic x") is None
    grant = checker.check(b"Bearer second-key-123")
    assert grant is not None and grant.allows("GPT-4o") and grant.allows("tiny:latest") and not grant.allows("other")


def test_auth_keys_must_be_long_enough(tmp_path: Path) -> None:
    with pytest.raises(RouteMapError, match="at least 8 characters"):
        load(tmp_path, UPSTREAMS + "auth: {keys: [{key: short}]}\n")


@pytest.mark.parametrize(
    ("patterns", "name", "allowed"),
    [
        pytest.param(["*"], "anything", True, id="star"),
        pytest.param(["local/*"], "LOCAL/qwen:7b", True, id="prefix-any-case"),
        pytest.param(["local/*:7b"], "local/qwen", False, id="tag-must-match"),
        pytest.param(["tiny"], "tiny:latest", True, id="latest-implied"),
        pytest.param(["a.b"], "axb", False, id="dot-is-literal"),
    ],
)
def test_key_model_patterns(patterns: list[str], name: str, allowed: bool) -> None:
    assert Grant(patterns).allows(name) is allowed


DOCS = Path(__file__).resolve().parent.parent / "docs"
ROOT_ROUTES = DOCS.parent / "routes.yaml"


def _yaml_blocks(markdown: str) -> list[str]:
    return [part.split("```", 1)[0] for part in markdown.split("```yaml\n")[1:]]


def _without_referenced_variables(text: str, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in re.findall(r"\$\{([A-Za-z_][A-Za-z0-9_]*)", text):
        monkeypatch.delenv(name, raising=False)


@pytest.mark.parametrize("index", range(len(_yaml_blocks((DOCS / "routes.md").read_text()))))
def test_every_example_of_the_reference_passes_check(
    index: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    block = _yaml_blocks((DOCS / "routes.md").read_text())[index]
    _without_referenced_variables(block, monkeypatch)
    path = tmp_path / "routes.yaml"
    path.write_text(block)
    assert main(["check", "--routes", str(path)]) == 0, capsys.readouterr().err


README = DOCS.parent / "README.md"


@pytest.mark.parametrize("index", [
    index for index, block in enumerate(_yaml_blocks(README.read_text() if README.exists() else "")) if "upstreams:" in block
])
def test_every_routes_example_of_the_readme_passes_check(
    index: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    block = _yaml_blocks(README.read_text())[index]
    _without_referenced_variables(block, monkeypatch)
    path = tmp_path / "routes.yaml"
    path.write_text(block)
    assert main(["check", "--routes", str(path)]) == 0, capsys.readouterr().err


@pytest.mark.parametrize("path", [DOCS / "routes.example.yaml", ROOT_ROUTES], ids=["multi-provider-example", "shipped"])
def test_the_shipped_files_pass_check_with_no_variable_set(
    path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    _without_referenced_variables(path.read_text(), monkeypatch)
    assert main(["check", "--routes", str(path)]) == 0
    out, err = capsys.readouterr()
    assert "warning:" in err and "error" not in err
    assert "(alias)" in out and "FALLBACKS" in out


def test_the_multi_provider_example_is_the_one_in_the_reference() -> None:
    example = (DOCS / "routes.example.yaml").read_text()
    assert _yaml_blocks((DOCS / "routes.md").read_text())[-1] in example


def test_the_shipped_file_has_an_entry_per_provider() -> None:
    routes = load_route_map(ROOT_ROUTES, {})
    providers = {upstream.provider for upstream in routes.upstreams.values()}
    assert providers == {"openai", "openrouter", "groq", "deepseek", "together", "mistral", "azure", "vllm", "llamacpp",
                         "lmstudio", "ollama"}


TWO_GPUS = """
upstreams:
  gpu-a: {base_url: "http://127.0.0.1:9/v1", provider: vllm, max_concurrent: 4}
  gpu-b: {base_url: "http://127.0.0.1:10/v1", cooldown: false}
  cloud: {base_url: "http://127.0.0.1:11/v1", provider: openai, cooldown: {after_failures: 5, seconds: 2.5}}
"""


def test_targets_resolve_each_deployment_with_its_own_upstream_model_and_quirks(tmp_path: Path) -> None:
    routes = load(tmp_path, TWO_GPUS + """
models:
  - name: qwen3
    aliases: [q3]
    model: Qwen/Qwen3-32B
    targets:
      - {upstream: gpu-a, weight: 2}
      - {upstream: cloud, model: qwen3-32b-instruct}
    balance: weighted
    fallbacks: [small]
  - {name: small, upstream: gpu-b}
  - name: "fam/*"
    targets: [{upstream: gpu-a, model: "org/*-Instruct"}, {upstream: gpu-b}]
""")
    target = routes.resolve("Qwen3:latest")
    assert target is not None and target.group is not None
    assert target.group.balance == "weighted" and target is target.group.targets[0]
    first, second = target.group.targets
    assert (first.upstream_name, first.upstream_model, first.weight) == ("gpu-a", "Qwen/Qwen3-32B", 2)
    assert (second.upstream_name, second.upstream_model, second.weight) == ("cloud", "qwen3-32b-instruct", 1)
    assert first.quirks.reasoning == "chat_template_kwargs" and second.quirks.max_tokens_field == "max_completion_tokens"
    assert all(t.listed_name == "qwen3:latest" for t in target.group.targets)
    alias = routes.resolve("q3")
    assert alias is not None and alias.group is not None and alias.listed_name == "q3:latest"
    pattern = routes.resolve("fam/llama")
    assert pattern is not None and pattern.group is not None
    assert [(t.upstream_name, t.upstream_model) for t in pattern.group.targets] == [
        ("gpu-a", "org/llama-Instruct"), ("gpu-b", "llama")]
    assert pattern.group.balance == "least_busy"
    fallback = routes.fallback_targets(target)
    assert [t.upstream_name for t in fallback] == ["gpu-b"] and fallback[0].group is None
    assert [t.listed_name for t in routes.listed_targets()][:2] == ["qwen3:latest", "q3:latest"]
    assert routes.listed_targets()[0].upstream_name == "gpu-a", "the listing describes the first target"


def test_upstream_limits_and_cooldowns_have_defaults_and_an_off_switch(tmp_path: Path) -> None:
    routes = load(tmp_path, TWO_GPUS + "models:\n  - {name: x, upstream: gpu-a}\n")
    gpu_a, gpu_b, cloud = (routes.upstreams[name] for name in ("gpu-a", "gpu-b", "cloud"))
    assert gpu_a.max_concurrent == 4 and gpu_b.max_concurrent is None
    assert gpu_a.cooldown is not None and (gpu_a.cooldown.after_failures, gpu_a.cooldown.seconds) == (3, 30.0)
    assert gpu_b.cooldown is None
    assert cloud.cooldown is not None and (cloud.cooldown.after_failures, cloud.cooldown.seconds) == (5, 2.5)


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        pytest.param("{name: x, upstream: gpu-a, targets: [{upstream: gpu-b}]}",
                     r"models\[0\] \('x'\): give exactly one of 'upstream' \(one deployment\) and 'targets'", id="both"),
        pytest.param("{name: x, model: m}", r"models\[0\] \('x'\): give exactly one of 'upstream'", id="neither"),
        pytest.param("{name: x, targets: []}", r"models\[0\] \('x'\)\.targets: .*at least 1 item", id="empty"),
        pytest.param("{name: x, targets: [{upstream: gpu-a}, {upstream: nowhere}]}",
                     r"models\[0\] \('x'\): targets\[1\]\.upstream 'nowhere' is not defined under upstreams", id="undefined"),
        pytest.param("{name: x, targets: [{upstream: gpu-a, weight: 0}]}",
                     r"models\[0\] \('x'\)\.targets\[0\]\.weight: .*greater than 0", id="weight-zero"),
        pytest.param("{name: x, targets: [{upstream: gpu-a, weight: 1.5}]}",
                     r"models\[0\] \('x'\)\.targets\[0\]\.weight: weight must be a positive whole number", id="weight-fraction"),
        pytest.param("{name: x, targets: [{upstream: gpu-a, port: 1}]}",
                     r"models\[0\] \('x'\)\.targets\[0\]\.port: unknown key", id="unknown-key"),
        pytest.param("{name: x, upstream: gpu-a, balance: weighted}", r"models\[0\] \('x'\): 'balance' needs 'targets'",
                     id="balance-alone"),
        pytest.param("{name: x, targets: [{upstream: gpu-a}], balance: random}", r"models\[0\] \('x'\)\.balance: Input should be",
                     id="balance-unknown"),
    ],
)
def test_targets_are_checked_with_the_entry_named(tmp_path: Path, entry: str, message: str) -> None:
    with pytest.raises(RouteMapError, match=message):
        load(tmp_path, TWO_GPUS + f"models:\n  - {entry}\n")


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        pytest.param("max_concurrent: 0", r"upstreams\.u\.max_concurrent: .*greater than 0", id="max-zero"),
        pytest.param("cooldown: {after_failures: 0}", r"upstreams\.u\.cooldown\.after_failures: .*greater than or equal to 1",
                     id="after-zero"),
        pytest.param("cooldown: {seconds: 30, for: 2}", r"upstreams\.u\.cooldown\.for: unknown key", id="unknown-key"),
    ],
)
def test_upstream_limits_are_checked(tmp_path: Path, setting: str, message: str) -> None:
    with pytest.raises(RouteMapError, match=message):
        load(tmp_path, f"upstreams:\n  u:\n    base_url: http://127.0.0.1:9/v1\n    {setting}\nmodels:\n  - {{name: x, upstream: u}}\n")


def test_balance_orders_weighted_smoothly_and_least_busy_by_load_weight_then_turn(tmp_path: Path) -> None:
    from gateway.upstream import balance

    routes = load(tmp_path, TWO_GPUS + """
models:
  - name: w
    targets: [{upstream: gpu-a, weight: 2}, {upstream: gpu-b}]
    balance: weighted
  - name: lb
    targets: [{upstream: gpu-a}, {upstream: gpu-b}, {upstream: cloud, weight: 2}]
""")
    weighted, least = routes.resolve("w"), routes.resolve("lb")
    assert weighted is not None and weighted.group is not None and least is not None and least.group is not None
    never: dict[str, int] = {}
    picks = [balance.order(weighted.group, never, lambda name: False)[0].upstream_name for _ in range(6)]
    assert picks == ["gpu-a", "gpu-b", "gpu-a", "gpu-a", "gpu-b", "gpu-a"], "smooth: interleaved, 2 of every 3"
    first = balance.order(weighted.group, never, lambda name: name == "gpu-a")
    assert [t.upstream_name for t in first][-1] == "gpu-a", "a target known to be cooling goes last"
    # least_busy: the fewest in flight; among equals the higher weight; then in turn.
    assert balance.order(least.group, {"cloud": 1}, lambda name: False)[0].upstream_name in ("gpu-a", "gpu-b")
    assert balance.order(least.group, {}, lambda name: False)[0].upstream_name == "cloud"
    turns = [balance.order(least.group, {"cloud": 5}, lambda name: False)[0].upstream_name for _ in range(4)]
    assert sorted(turns) == ["gpu-a", "gpu-a", "gpu-b", "gpu-b"], "equal targets share the load"
    chosen = balance.order(least.group, {"cloud": 5}, lambda name: False)[0]
    assert [t.upstream_name for t in balance.rest(chosen)][0] == "cloud", "the rest: by weight"
