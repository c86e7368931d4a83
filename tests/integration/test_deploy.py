"""The deploy files, checked by real validators (the Compose spec, Kubernetes' own schemas) and against the code.

No Docker engine or cluster here: docker-compose.yml is validated by check-jsonschema with the Compose spec it
vendors, the Kubernetes manifests by kubernetes-validate against a pinned Kubernetes version. KEDA's resources are
CRDs that no Kubernetes schema knows: their essential fields are checked here instead.
"""

from __future__ import annotations

import copy
import importlib.util
import re
import shlex
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from producer import keys
from producer.celery_config import celery_config
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
    workers = [name for name, svc in services.items() if "worker" in svc.get("command", [])]
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
