"""The Helm chart, checked with real Helm v4 (helm-python-sdk embeds it) and validated against
Kubernetes' own schemas (kubernetes-validate), plus the assertions that matter in production."""

import os
import pathlib
import subprocess
import tempfile

import helm_python as helm
import kubernetes_validate
import pytest
import yaml

ROOT = pathlib.Path(__file__).resolve().parents[2]
CHART = ROOT / "helm" / "flowstate"
PRODUCTION = yaml.safe_load((ROOT / "helm" / "tests" / "values-production.yaml").read_text())
KUBE_VERSION = os.environ.get("KUBE_VERSION", "1.37.0")
# CRD kinds Kubernetes' schemas do not cover; checked by hand below.
CRD_KINDS = {"ServiceMonitor"}


def render(values=None):
    chart = helm.Chart.load(str(CHART))
    manifests = chart.render(values, name="fs", namespace="platform", is_install=True)
    docs = []
    for path, text in manifests.items():
        if path.endswith("NOTES.txt"):
            continue
        docs.extend(d for d in yaml.safe_load_all(text) if d)
    return docs


def by_kind(docs, kind):
    return [d for d in docs if d["kind"] == kind]


def container(docs):
    (deployment,) = by_kind(docs, "Deployment")
    (c,) = deployment["spec"]["template"]["spec"]["containers"]
    return deployment, c


@pytest.mark.parametrize("values", [None, PRODUCTION], ids=["defaults", "production"])
def test_lints_clean_with_helm(values):
    report = helm.lint(str(CHART), values, strict=True, kube_version=f"v{KUBE_VERSION}")
    assert not report["errors"], report
    assert not [m for m in report["messages"] if m["severity"] >= 2], report


@pytest.mark.parametrize("values", [None, PRODUCTION], ids=["defaults", "production"])
def test_every_manifest_validates_against_kubernetes(values):
    docs = render(values)
    assert docs
    for doc in docs:
        if doc["kind"] in CRD_KINDS:
            continue
        kubernetes_validate.validate(doc, KUBE_VERSION, strict=True)


@pytest.mark.parametrize("values", [None, PRODUCTION], ids=["defaults", "production"])
def test_probes_are_native_grpc_on_the_right_port_and_services(values):
    docs = render(values)
    _, c = container(docs)
    grpc_port = next(p["containerPort"] for p in c["ports"] if p["name"] == "grpc")
    assert c["startupProbe"]["grpc"] == {"port": grpc_port, "service": ""}
    assert c["livenessProbe"]["grpc"] == {"port": grpc_port, "service": ""}
    assert c["readinessProbe"]["grpc"] == {"port": grpc_port, "service": "readiness"}
    env = {e["name"]: e for e in c["env"]}
    assert env["FLOWSTATE_SERVER__LISTEN"]["value"] == f"0.0.0.0:{grpc_port}"


def test_production_takes_redis_url_and_password_from_the_secret():
    docs = render(PRODUCTION)
    deployment, c = container(docs)
    env = {e["name"]: e for e in c["env"]}
    assert env["FLOWSTATE_REDIS__URL"]["valueFrom"]["secretKeyRef"] == {
        "name": "flowstate-redis",
        "key": "url",
    }
    assert env["FLOWSTATE_REDIS__PASSWORD"]["valueFrom"]["secretKeyRef"] == {
        "name": "flowstate-redis",
        "key": "password",
    }
    assert "replicas" not in deployment["spec"], "the HPA owns the replica count"
    (hpa,) = by_kind(docs, "HorizontalPodAutoscaler")
    assert hpa["spec"]["minReplicas"] == 3
    assert by_kind(docs, "PodDisruptionBudget")
    (monitor,) = by_kind(docs, "ServiceMonitor")
    assert monitor["spec"]["endpoints"][0]["port"] == "metrics"
    assert monitor["metadata"]["labels"]["release"] == "prometheus"


def test_pods_are_locked_down_and_drain_before_they_are_killed():
    docs = render(PRODUCTION)
    deployment, c = container(docs)
    pod = deployment["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    sc = c["securityContext"]
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"]["drop"] == ["ALL"]
    env = {e["name"]: e for e in c["env"]}
    drain = int(env["FLOWSTATE_SERVER__SHUTDOWN_GRACE"]["value"].rstrip("s"))
    pre_stop = c["lifecycle"]["preStop"]["sleep"]["seconds"]
    assert pod["terminationGracePeriodSeconds"] > drain + pre_stop
    assert pod["topologySpreadConstraints"]
    services = by_kind(docs, "Service")
    ports = {p["name"]: p for p in services[0]["spec"]["ports"]}
    assert set(ports) == {"grpc", "metrics"}


def test_memory_store_runs_one_replica_without_autoscaling():
    docs = render({"autoscaling": {"enabled": True}, "replicaCount": 5})
    deployment, c = container(docs)
    assert deployment["spec"]["replicas"] == 1
    assert deployment["spec"]["strategy"]["type"] == "Recreate"
    assert not by_kind(docs, "HorizontalPodAutoscaler")
    assert not by_kind(docs, "PodDisruptionBudget")
    assert not [e for e in c["env"] if e["name"].startswith("FLOWSTATE_REDIS__")]


def test_schema_rejects_redis_without_a_url():
    chart = helm.Chart.load(str(CHART))
    with pytest.raises(helm.HelmError) as err:
        chart.validate_schema({"store": "redis"})
    message = str(err.value)
    assert "redis" in message, message
    with pytest.raises(helm.HelmError):
        render({"store": "redis"})
    with pytest.raises(helm.HelmError):
        chart.validate_schema({"store": "redis", "redis": {"url": "http://nope"}})
    with pytest.raises(helm.HelmError):
        chart.validate_schema({"store": "cassandra"})
    with pytest.raises(helm.HelmError):
        chart.validate_schema({"config": {"redis": {"password": "in-a-configmap"}}})
    chart.validate_schema({"store": "redis", "redis": {"url": "redis://redis:6379"}})
    chart.validate_schema({"store": "memory"})


@pytest.mark.parametrize("values", [None, PRODUCTION], ids=["defaults", "production"])
def test_rendered_config_is_accepted_by_flowstate(values):
    binary = os.environ.get("FLOWSTATE_BIN", str(ROOT / "target" / "debug" / "flowstate"))
    if not pathlib.Path(binary).exists():
        pytest.fail(f"build flowstate first ({binary} is missing)")
    (configmap,) = by_kind(render(values), "ConfigMap")
    with tempfile.NamedTemporaryFile("w", suffix=".toml") as f:
        f.write(configmap["data"]["flowstate.toml"])
        f.flush()
        env = {k: v for k, v in os.environ.items() if not k.startswith("FLOWSTATE_")}
        out = subprocess.run(
            [binary, "--config", f.name, "config"], capture_output=True, text=True, env=env
        )
    assert out.returncode == 0, out.stderr
    assert "icp_profile" in out.stdout
