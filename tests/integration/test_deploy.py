"""The deploy files, checked by real validators (the Compose spec, Kubernetes' own schemas) and against the code.

No Docker engine or cluster here: docker-compose.yml is validated by check-jsonschema with the Compose spec it
vendors, the Kubernetes manifests by kubernetes-validate against a pinned Kubernetes version. KEDA's resources are
CRDs that no Kubernetes schema knows: their essential fields are checked here instead.
"""

from __future__ import annotations

import ast
import copy
import importlib.metadata
import importlib.util
import re
import shlex
import socket
import subprocess
import sys
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import kubernetes_validate
import pytest
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from producer import keys
from producer.api.app import create_app
from producer.celery_config import celery_config
from producer.cli_args import build_parser
from producer.settings import Settings
from tests import services

REPO = Path(__file__).resolve().parents[2]
COMPOSE = REPO / "docker-compose.yml"
K8S = REPO / "deploy" / "k8s"
K8S_VERSION = "1.32.0"  # the oldest Kubernetes minor the managed clouds still support at the time of writing
BIN = Path(sys.executable).parent
CRD_GROUPS = ("keda.sh/", "monitoring.coreos.com/")  # not in Kubernetes' schemas; checked field by field below
# Worst chunk on a GPU: the longest chunk (400 characters) at the model's frame cap (2 s + 6 characters a second:
# csm_model.frame_budget) and a real-time factor of 5 (README: CSMModel on an H100 at batch 1 runs 0.38 s per
# 80 ms frame, 4.75).
WORST_CHUNK_S = (2.0 + 400 / 6.0) * 5.0


def compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())
    return data


def manifests() -> list[dict[str, Any]]:
    return [doc for path in sorted(K8S.glob("*.yaml")) for doc in yaml.safe_load_all(path.read_text()) if doc]


def find(kind: str, name: str) -> dict[str, Any]:
    return next(d for d in manifests() if d["kind"] == kind and d["metadata"]["name"] == name)


def option(args: list[str], flag: str) -> str:
    return args[args.index(flag) + 1]


# The webhook delivery worker, exactly as producer/webhooks runs it (compose and Kubernetes alike).
WEBHOOK_WORKER = ["celery", "-A", "producer.webhooks.app", "worker", "-Q", f"{keys.WEBHOOK_QUEUE},{keys.BOOK_QUEUE}",
                  "--pool", "threads",
                  "--concurrency", "16", "--hostname", "webhooks@%h"]


def app_paths() -> set[str]:
    """The paths the real API app serves (GET), asked of the app itself."""
    app = create_app(Settings())
    return {route.path for route in app.routes if "GET" in (getattr(route, "methods", None) or set())}


def compose_api_health_url() -> str:
    test = compose()["services"]["api"]["healthcheck"]["test"]
    found = re.search(r"http://127\.0\.0\.1:\d+/[\w/]*", " ".join(test))
    assert found, test
    return found.group()


def test_compose_file_validates_against_the_compose_spec() -> None:
    done = subprocess.run([str(BIN / "check-jsonschema"), "--builtin-schema", "vendor.compose-spec", str(COMPOSE)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    bad = COMPOSE.read_text().replace("stop_grace_period:", "stop_grace_periods:", 1)
    rejected = subprocess.run([str(BIN / "check-jsonschema"), "--builtin-schema", "vendor.compose-spec", "-"],
                              input=bad, capture_output=True, text=True, timeout=120)
    assert rejected.returncode != 0, "the validator must reject an unknown service key"


def test_compose_workers_consume_the_producers_queue() -> None:
    services = compose()["services"]
    workers = [name for name, svc in services.items() if "worker.app" in svc.get("command", [])]
    assert sorted(workers) == ["worker-cpu", "worker-gpu"]
    for name in workers:
        svc = services[name]
        assert option(svc["command"], "--queues") == keys.NARRATION_QUEUE, name
        assert option(svc["command"], "--concurrency") == "1", name
        assert svc["environment"]["ECHOFORGE_QUEUE"] == keys.NARRATION_QUEUE, name
        assert svc["environment"]["ECHOFORGE_ALLOW_PLACEHOLDER"] == "false", f"{name}: production refuses the tone"
        node = option(svc["command"], "--hostname").split("@")[0]
        assert f'inspect ping --timeout 10 --destination "{node}@$$HOSTNAME"' in svc["healthcheck"]["test"][-1], name
    gpu = services["worker-gpu"]
    assert gpu["deploy"]["resources"]["reservations"]["devices"] == [
        {"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}]
    assert gpu["environment"]["HF_TOKEN"].startswith("${HF_TOKEN")
    assert "hf-cache:/cache/huggingface" in gpu["volumes"]
    assert services["worker-cpu"]["profiles"] == ["cpu"] and services["cli"]["profiles"] == ["tools"]


def test_compose_redis_flower_and_health_checks() -> None:
    services = compose()["services"]
    redis_cmd = " ".join(services["redis"]["command"])
    assert "--appendonly yes" in redis_cmd and "--maxmemory-policy noeviction" in redis_cmd
    assert "requirepass" in redis_cmd and "--requirepass" not in redis_cmd, "the password stays off the argv"
    flower = services["flower"]
    assert flower["environment"]["FLOWER_BASIC_AUTH"].startswith("${FLOWER_USER")
    assert "--persistent=True" in flower["command"] and "flower-data:/data" in flower["volumes"]
    one_shot = {"minio-init", "cli"}
    for name, svc in services.items():
        if name not in one_shot:
            assert svc.get("healthcheck", {}).get("test"), f"{name} has no health check"
    assert services["minio-init"]["depends_on"]["minio"]["condition"] == "service_healthy"
    assert services["worker-gpu"]["depends_on"]["minio-init"]["condition"] == "service_completed_successfully"


def test_compose_secrets_come_only_from_the_git_ignored_env_file() -> None:
    text = COMPOSE.read_text()
    used = set(re.findall(r"(?<!\$)\$\{([A-Z0-9_]+)", text))
    example = dict(line.split("=", 1) for line in (REPO / ".env.example").read_text().splitlines()
                   if line and not line.startswith("#"))
    assert used <= set(example), f"not in .env.example: {sorted(used - set(example))}"
    for name, svc in compose()["services"].items():
        for var, value in (svc.get("environment") or {}).items():
            if re.search(r"PASSWORD|SECRET|TOKEN|AUTH|REDIS_URL", var):
                assert "${" in str(value), f"{name}.{var} is a literal secret"
        assert "env_file" not in svc, f"{name}: every service gets only the variables it needs"
    ignored = subprocess.run(["git", "check-ignore", "-q", ".env"], cwd=REPO)
    assert ignored.returncode == 0, ".env must be git-ignored"
    assert subprocess.run(["git", "check-ignore", "-q", ".env.example"], cwd=REPO).returncode == 1


@pytest.mark.parametrize("path", sorted(K8S.glob("*.yaml")), ids=lambda p: p.name)
def test_kubernetes_manifests_validate(path: Path) -> None:
    for doc in yaml.safe_load_all(path.read_text()):
        if doc["apiVersion"].startswith(CRD_GROUPS):
            continue  # a CRD: test_keda_scaled_object / test_alert_rules check it
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def test_kubernetes_validator_is_not_vacuous() -> None:
    deployment = copy.deepcopy(find("Deployment", "echoforge-worker"))
    deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] = "a while"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, K8S_VERSION, strict=True)
    deployment = copy.deepcopy(find("Deployment", "echoforge-worker"))
    deployment["spec"]["template"]["spec"]["containers"][0]["livenessProbes"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, K8S_VERSION, strict=True)


def test_worker_deployment_runs_one_process_per_gpu() -> None:
    spec = find("Deployment", "echoforge-worker")["spec"]["template"]["spec"]
    (container,) = spec["containers"]
    args = container["args"]
    assert option(args, "--queues") == keys.NARRATION_QUEUE and option(args, "--concurrency") == "1"
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    node = option(args, "--hostname").split("@")[0]
    for probe in ("startupProbe", "livenessProbe"):
        command = container[probe]["exec"]["command"][-1]
        assert "inspect ping" in command and f'--destination "{node}@$HOSTNAME"' in command, probe
    assert spec["terminationGracePeriodSeconds"] > 2 * WORST_CHUNK_S
    config = find("ConfigMap", "echoforge-config")["data"]
    assert config["ECHOFORGE_QUEUE"] == keys.NARRATION_QUEUE
    assert config["ECHOFORGE_ALLOW_PLACEHOLDER"] == "false"
    port = int(config["ECHOFORGE_METRICS_PORT"])
    assert container["ports"] == [{"name": "metrics", "containerPort": port}]
    assert find("Deployment", "echoforge-worker")["spec"]["template"]["metadata"]["annotations"][
        "prometheus.io/port"] == str(port)


def test_keda_scaled_object_reads_every_priority_list_of_the_producers_queue() -> None:
    scaled = find("ScaledObject", "echoforge-worker")["spec"]
    assert scaled["scaleTargetRef"]["name"] == "echoforge-worker"
    assert scaled["minReplicaCount"] == 0 and scaled["maxReplicaCount"] >= 1
    redis_triggers = [t for t in scaled["triggers"] if t["type"] == "redis"]
    assert [t["metadata"]["listName"] for t in redis_triggers] == keys.priority_queue_lists(keys.NARRATION_QUEUE)
    auth = {d["metadata"]["name"] for d in manifests() if d["kind"] == "TriggerAuthentication"}
    for trigger in redis_triggers:
        assert trigger["authenticationRef"]["name"] in auth
        assert "password" not in trigger["metadata"], "the Redis password comes from the TriggerAuthentication"
    running = next(t for t in scaled["triggers"] if t["type"] == "prometheus")
    assert 'echoforge_job_records{state="running"}' in running["metadata"]["query"]
    formula = scaled["advanced"]["scalingModifiers"]["formula"]
    assert sorted(re.findall(r"\w+", formula)) == sorted(t["name"] for t in scaled["triggers"])
    assert scaled["advanced"]["scalingModifiers"]["target"] == "1"


def test_dockerfiles_pin_python_and_install_like_ci() -> None:
    worker = (REPO / "deploy" / "worker.Dockerfile").read_text()
    producer = (REPO / "deploy" / "producer.Dockerfile").read_text()
    for text in (worker, producer):
        assert "ARG PYTHON_IMAGE=python:3.11-slim" in text
        assert re.search(r"pip install -c constraints\.txt ", text)
    assert "pip install -c constraints.txt '.[worker]'" in worker
    assert "ARG WITH_COMPILER=0" in worker and "g++" in worker, "ECHOFORGE_TORCH_COMPILE needs a compiler on demand"
    assert {"FROM runtime AS cuda", "FROM runtime AS cpu"} <= set(worker.splitlines())
    found = re.search(r"CMD \[(.*?)\]", worker.replace("\\\n", ""), re.S)
    assert found is not None
    cmd = shlex.split(found.group(1).replace(",", " "))
    assert option(cmd, "--queues") == keys.NARRATION_QUEUE
    ignore = (REPO / ".dockerignore").read_text().splitlines()
    assert ignore[ignore.index("*") + 1:] and "!.env" not in ignore, "the build context never carries .env"


def test_control_app_uses_the_workers_celery_settings() -> None:
    spec = importlib.util.spec_from_file_location("control_app", REPO / "deploy" / "control_app.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    expected = celery_config(Settings())
    assert module.app.conf.broker_transport_options == expected["broker_transport_options"]
    assert module.app.conf.accept_content == ["json"]
    # The light image has no torch: loading the app must not import worker code.
    probe = "import sys, control_app; print(sorted(m for m in sys.modules if m.split('.')[0] in ('worker', 'torch')))"
    done = subprocess.run([sys.executable, "-c", probe], cwd=REPO / "deploy", capture_output=True, text=True,
                          env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"}, timeout=60)
    assert done.returncode == 0 and done.stdout.strip() == "[]", done.stdout + done.stderr


def test_alert_rules_have_the_fields_prometheus_needs() -> None:
    rule = find("PrometheusRule", "echoforge")
    assert rule["apiVersion"] == "monitoring.coreos.com/v1"
    rules = [r for group in rule["spec"]["groups"] for r in group["rules"]]
    assert len({r["alert"] for r in rules}) == len(rules) >= 5
    for r in rules:
        assert set(r) <= {"alert", "expr", "for", "labels", "annotations"} and r["expr"].count("echoforge_") >= 1
        assert r["labels"]["severity"] in ("warning", "critical") and r["annotations"]["summary"]


def test_the_liveness_probe_command_pings_a_real_worker(
    settings: Settings, start_worker: Callable[..., services.Worker]
) -> None:
    start_worker(settings, name="gpu")  # --hostname gpu@%h, as in the Deployment
    container = find("Deployment", "echoforge-worker")["spec"]["template"]["spec"]["containers"][0]
    probe = container["livenessProbe"]["exec"]["command"]
    env = {**services.settings_env(settings), "HOSTNAME": socket.gethostname(),
           "PATH": f"{BIN}:/usr/bin:/bin"}
    # The image runs it from its working directory, which holds control_app.py.
    alive = subprocess.run(probe, env=env, cwd=REPO / "deploy", capture_output=True, text=True, timeout=120)
    assert alive.returncode == 0, alive.stdout + alive.stderr
    elsewhere = subprocess.run(probe, env={**env, "HOSTNAME": "some-other-pod"}, cwd=REPO / "deploy",
                               capture_output=True, text=True, timeout=120)
    assert elsewhere.returncode != 0, "the probe must fail when this pod's worker does not answer"


def test_compose_api_serves_on_its_published_port_with_a_health_check_the_app_answers() -> None:
    api = compose()["services"]["api"]
    assert api["build"]["dockerfile"] == "deploy/producer.Dockerfile" and api["image"] == "echoforge-producer:latest"
    args = build_parser().parse_args(api["command"][1:])  # the real CLI parses the service's command
    assert api["command"][0] == "echoforge" and args.command == "serve" and args.host == "0.0.0.0"
    assert api["ports"] == [f"127.0.0.1:${{API_PORT:-{args.port}}}:{args.port}"], "published on localhost only"
    health = httpx.URL(compose_api_health_url())
    assert health.port == args.port and health.path == "/readyz" and health.path in app_paths()
    env = api["environment"]
    assert env["ECHOFORGE_QUEUE"] == keys.NARRATION_QUEUE and "ECHOFORGE_REDIS_URL" in env
    assert "ECHOFORGE_STORAGE_URL" in env and "AWS_SECRET_ACCESS_KEY" in env, "voice uploads and audio URLs"
    assert not {"HF_TOKEN", "FLOWER_BASIC_AUTH"} & set(env)
    assert api["depends_on"]["redis"]["condition"] == "service_healthy"


def test_compose_webhook_worker_consumes_the_webhook_queue_in_the_light_image() -> None:
    webhooks = compose()["services"]["webhooks"]
    assert webhooks["command"] == WEBHOOK_WORKER
    assert option(webhooks["command"], "-Q") == f"{keys.WEBHOOK_QUEUE},{keys.BOOK_QUEUE}"
    assert webhooks["image"] == "echoforge-producer:latest"
    assert 'inspect ping --timeout 10 --destination "webhooks@$$HOSTNAME"' in webhooks["healthcheck"]["test"][-1]
    env = set(webhooks["environment"])
    assert {"ECHOFORGE_STORAGE_URL", "AWS_SECRET_ACCESS_KEY"} <= env, "books: chapters in, M4B out"
    assert not {"HF_TOKEN", "FLOWER_BASIC_AUTH"} & env, "no model or Flower secrets"


def test_api_deployment_probes_paths_the_app_serves() -> None:
    paths = app_paths()
    spec = find("Deployment", "echoforge-api")["spec"]["template"]["spec"]
    (container,) = spec["containers"]
    args = build_parser().parse_args(container["args"][1:])
    assert args.command == "serve" and args.host == "0.0.0.0"
    assert container["ports"] == [{"name": "http", "containerPort": args.port}]
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert {"/readyz", "/healthz"} <= paths
    assert container["resources"]["requests"] and container["resources"]["limits"]["memory"]
    service = find("Service", "echoforge-api")["spec"]
    assert service["selector"] == find("Deployment", "echoforge-api")["spec"]["selector"]["matchLabels"]
    assert service["ports"][0]["targetPort"] == "http"


def test_webhook_deployment_runs_the_webhook_worker() -> None:
    (container,) = find("Deployment", "echoforge-webhooks")["spec"]["template"]["spec"]["containers"]
    assert container["args"] == WEBHOOK_WORKER == compose()["services"]["webhooks"]["command"]
    assert container["image"] == find("Deployment", "echoforge-api")["spec"]["template"]["spec"]["containers"][0][
        "image"], "the light image"
    assert '--destination "webhooks@$HOSTNAME"' in container["livenessProbe"]["exec"]["command"][-1]


def test_every_pod_reads_only_config_and_secret_keys_that_exist() -> None:
    config = find("ConfigMap", "echoforge-config")["metadata"]["name"]
    secret = find("Secret", "echoforge-secrets")
    for deployment in (d for d in manifests() if d["kind"] == "Deployment"):
        for container in deployment["spec"]["template"]["spec"]["containers"]:
            assert [ref["configMapRef"]["name"] for ref in container.get("envFrom", [])] == [config]
            for var in container.get("env", []):
                ref = var.get("valueFrom", {}).get("secretKeyRef")
                if ref:
                    assert ref["name"] == secret["metadata"]["name"] and ref["key"] in secret["stringData"], var
            assert container["securityContext"]["allowPrivilegeEscalation"] is False


def _closure(requirements: list[str]) -> set[str]:
    """Every distribution these requirements install (as resolved in this venv, which CI builds the same way)."""
    found: set[str] = set()
    seen: set[tuple[str, frozenset[str]]] = set()
    todo = [Requirement(r) for r in requirements]
    while todo:
        requirement = todo.pop()
        name = canonicalize_name(requirement.name)
        if (name, frozenset(requirement.extras)) in seen:
            continue
        seen.add((name, frozenset(requirement.extras)))
        found.add(name)
        for raw in importlib.metadata.requires(requirement.name) or []:
            sub = Requirement(raw)
            if sub.marker is None or any(sub.marker.evaluate({"extra": e}) for e in requirement.extras or {""}):
                todo.append(sub)
    return found


def _third_party_imports(package: Path) -> set[str]:
    names: set[str] = set()
    for path in package.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                names.add(node.module.split(".")[0])
    return {n for n in names if n not in sys.stdlib_module_names and n not in ("producer", "worker", "__future__")}


def test_the_producer_image_installs_every_library_the_api_and_producer_import() -> None:
    dockerfile = (REPO / "deploy" / "producer.Dockerfile").read_text()
    found = re.search(r"pip install -c constraints\.txt '\.\[([\w,-]+)\]'", dockerfile)
    assert found, "the producer image installs the package with extras"
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    extras = found.group(1).split(",")
    installed = _closure(project["dependencies"] + [r for e in extras for r in project["optional-dependencies"][e]])
    providers = importlib.metadata.packages_distributions()
    imported = _third_party_imports(REPO / "producer")
    assert {"fastapi", "uvicorn", "sse_starlette"} <= imported, "the API's libraries are seen"
    missing = {name for name in imported if not {canonicalize_name(d) for d in providers[name]} & installed}
    # Form and UploadFile (POST /v1/voices) need python-multipart, which FastAPI imports only when a form arrives.
    assert not missing and "python-multipart" in installed, f"not installed in the producer image: {missing}"


def test_the_health_checks_paths_answer_on_a_real_api(settings: Settings, start_api: Callable[..., str]) -> None:
    base = start_api(settings)
    probes = find("Deployment", "echoforge-api")["spec"]["template"]["spec"]["containers"][0]
    for path in (httpx.URL(compose_api_health_url()).path, probes["readinessProbe"]["httpGet"]["path"],
                 probes["livenessProbe"]["httpGet"]["path"]):
        assert httpx.get(base + path, timeout=10).status_code == 200, path
