"""The Helm chart, checked with real Helm v4 (helm-python-sdk embeds it) and validated against
Kubernetes' own schemas (kubernetes-validate), plus the assertions that matter in production."""

import os
import pathlib
import shutil
import subprocess
import tempfile
import tomllib

import helm_python as helm
import kubernetes_validate
import pytest
import yaml

ROOT = pathlib.Path(__file__).resolve().parents[2]
CHART = ROOT / "helm" / "flowstate"
PRODUCTION = yaml.safe_load((CHART / "values-production.yaml").read_text())
KUBE_VERSION = os.environ.get("KUBE_VERSION", "1.37.0")
# CRD kinds Kubernetes' schemas do not cover; checked by hand below.
CRD_KINDS = {"ServiceMonitor", "PrometheusRule"}


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
def test_probes_are_native_grpc_on_a_plaintext_port(values):
    """The kubelet's gRPC probes cannot speak TLS: with TLS on they use the health-only port."""
    docs = render(values)
    _, c = container(docs)
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    env = {e["name"]: e for e in c["env"]}
    assert env["FLOWSTATE_SERVER__LISTEN"]["value"] == f"0.0.0.0:{ports['grpc']}"
    if values and values.get("tls", {}).get("enabled"):
        probe_port = ports["health"]
        assert env["FLOWSTATE_SERVER__HEALTH_LISTEN"]["value"] == f"0.0.0.0:{probe_port}"
    else:
        probe_port = ports["grpc"]
        assert "FLOWSTATE_SERVER__HEALTH_LISTEN" not in env
    assert c["startupProbe"]["grpc"] == {"port": probe_port, "service": ""}
    assert c["livenessProbe"]["grpc"] == {"port": probe_port, "service": ""}
    assert c["readinessProbe"]["grpc"] == {"port": probe_port, "service": "readiness"}


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


CLUSTER = {
    "store": "redis",
    "redis": {
        "mode": "cluster",
        "nodes": ["redis://redis-cluster-0.redis-cluster:6379", "redis://redis-cluster-1.redis-cluster:6379"],
    },
}
SENTINEL = {
    "store": "redis",
    "redis": {
        "mode": "sentinel",
        "sentinels": ["redis://redis-sentinel-0.redis:26379", "redis://redis-sentinel-1.redis:26379"],
        "masterName": "mymaster",
    },
}


def test_cluster_and_sentinel_modes_render_their_own_settings():
    _, c = container(render(CLUSTER))
    env = {e["name"]: e.get("value") for e in c["env"]}
    assert env["FLOWSTATE_REDIS__MODE"] == "cluster"
    assert env["FLOWSTATE_REDIS__NODES"] == ",".join(CLUSTER["redis"]["nodes"])
    assert "FLOWSTATE_REDIS__URL" not in env
    _, c = container(render(SENTINEL))
    env = {e["name"]: e.get("value") for e in c["env"]}
    assert env["FLOWSTATE_REDIS__MODE"] == "sentinel"
    assert env["FLOWSTATE_REDIS__SENTINELS"] == ",".join(SENTINEL["redis"]["sentinels"])
    assert env["FLOWSTATE_REDIS__MASTER_NAME"] == "mymaster"
    assert "FLOWSTATE_REDIS__URL" not in env
    chart = helm.Chart.load(str(CHART))
    with pytest.raises(helm.HelmError):
        chart.validate_schema({"store": "redis", "redis": {"mode": "sentinel", "sentinels": ["redis://s:26379"]}})
    with pytest.raises(helm.HelmError):
        chart.validate_schema({"store": "redis", "redis": {"mode": "cluster"}})
    with pytest.raises(helm.HelmError):
        chart.validate_schema({"store": "redis", "redis": {"mode": "ring"}})


@pytest.mark.parametrize(
    "values", [None, PRODUCTION, CLUSTER, SENTINEL], ids=["defaults", "production", "cluster", "sentinel"]
)
def test_rendered_config_is_accepted_by_flowstate(values):
    """The ConfigMap with the container's own environment, as the pod starts it."""
    binary = os.environ.get("FLOWSTATE_BIN", str(ROOT / "target" / "debug" / "flowstate"))
    if not pathlib.Path(binary).exists():
        pytest.fail(f"build flowstate first ({binary} is missing)")
    docs = render(values)
    (configmap,) = by_kind(docs, "ConfigMap")
    _, c = container(docs)
    with tempfile.NamedTemporaryFile("w", suffix=".toml") as f:
        f.write(configmap["data"]["flowstate.toml"])
        f.flush()
        env = {k: v for k, v in os.environ.items() if not k.startswith("FLOWSTATE_")}
        env.update({e["name"]: e["value"] for e in c["env"] if "value" in e})
        if any("valueFrom" in e and e["name"] == "FLOWSTATE_REDIS__URL" for e in c["env"]):
            env["FLOWSTATE_REDIS__URL"] = "redis://redis:6379"
        out = subprocess.run(
            [binary, "--config", f.name, "config"], capture_output=True, text=True, env=env
        )
    assert out.returncode == 0, out.stderr
    assert "icp_profile" in out.stdout
    if values is PRODUCTION:
        assert 'mode = "required"' in out.stdout and "spiffe://" in out.stdout


def test_production_mounts_the_keys_and_tls_secrets_whole():
    """Whole Secret volumes (no subPath) are updated in place by the kubelet: rotated keys and
    certificates reach flowstate without a restart."""
    deployment, c = container(render(PRODUCTION))
    env = {e["name"]: e.get("value") for e in c["env"]}
    assert env["FLOWSTATE_AUTH__MODE"] == "required"
    assert env["FLOWSTATE_AUTH__KEYS_FILE"] == "/etc/flowstate/keys/keys"
    assert env["FLOWSTATE_SERVER__TLS__CERT_FILE"] == "/etc/flowstate/tls/tls.crt"
    # Client certificates are checked against a CA of their own, not the server's issuer.
    assert env["FLOWSTATE_SERVER__TLS__CLIENT_CA_FILE"] == "/etc/flowstate/client-ca/ca.crt"
    assert env["FLOWSTATE_SERVER__TLS__CLIENT_AUTH"] == "optional"
    mounts = {m["name"]: m for m in c["volumeMounts"]}
    assert not any("subPath" in m for m in mounts.values())
    assert mounts["keys"]["mountPath"] == "/etc/flowstate/keys" and mounts["keys"]["readOnly"]
    assert mounts["tls"]["mountPath"] == "/etc/flowstate/tls"
    assert mounts["client-ca"]["mountPath"] == "/etc/flowstate/client-ca"
    volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
    assert volumes["keys"]["secret"]["secretName"] == "flowstate-keys"
    assert volumes["tls"]["secret"]["secretName"] == "flowstate-tls"
    assert volumes["client-ca"]["secret"]["secretName"] == "flowstate-client-ca"
    assert not any(k.startswith("checksum/secret") for k in deployment["spec"]["template"]["metadata"]["annotations"])


def test_defaults_say_auth_is_off_and_mount_no_secret():
    docs = render(None)
    _, c = container(docs)
    env = {e["name"]: e.get("value") for e in c["env"]}
    assert env["FLOWSTATE_AUTH__MODE"] == "none"
    assert not [e for e in env if e.startswith("FLOWSTATE_SERVER__TLS__")]
    assert {m["name"] for m in c["volumeMounts"]} == {"config"}
    assert not by_kind(docs, "NetworkPolicy")
    chart = helm.Chart.load(str(CHART))
    notes = chart.render(None, name="fs", namespace="platform", is_install=True)
    text = next(t for p, t in notes.items() if p.endswith("NOTES.txt"))
    assert 'auth.mode is "none"' in text


def test_network_policy_admits_clients_prometheus_and_probes_only():
    (policy,) = by_kind(render(PRODUCTION), "NetworkPolicy")
    spec = policy["spec"]
    assert spec["policyTypes"] == ["Ingress"]
    assert spec["podSelector"]["matchLabels"]["app.kubernetes.io/name"] == "flowstate"
    rules = {r["ports"][0]["port"]: r for r in spec["ingress"]}
    assert set(rules) == {"grpc", "metrics", "health"}
    assert rules["grpc"]["from"] == [
        {"podSelector": {"matchLabels": {"app.kubernetes.io/component": "backend"}}}
    ]
    (prom,) = rules["metrics"]["from"]
    assert prom["namespaceSelector"]["matchLabels"] == {"kubernetes.io/metadata.name": "monitoring"}
    assert "from" not in rules["health"], "the kubelet's probes come from the node"


def test_schema_refuses_trust_settings_that_cannot_work():
    chart = helm.Chart.load(str(CHART))
    for bad in [
        {"auth": {"mode": "required"}},
        {"auth": {"mode": "sometimes"}},
        {"tls": {"enabled": True}},
        {"tls": {"enabled": True, "existingSecret": "t", "clientAuth": "maybe"}},
        {"auth": {"mode": "required", "clients": [{"san": "spiffe://x", "tenant": "a", "allow": "*"}]}},
        # Identities by SAN need a CA of their own, not whatever issues the server certificate.
        {"auth": {"mode": "required", "clients": [{"san": "spiffe://x", "tenant": "a", "allow": "*"}]},
         "tls": {"enabled": True, "existingSecret": "t", "clientAuth": "required"}},
        {"auth": {"clients": [{"san": "spiffe://x", "tenant": "_reserved", "allow": "*"}]},
         "tls": {"enabled": True, "existingSecret": "t", "clientAuth": "optional"}},
        {"networkPolicy": {"enabled": True}},
    ]:
        with pytest.raises(helm.HelmError):
            chart.validate_schema(bad)
    chart.validate_schema({"auth": {"mode": "required", "existingSecret": "keys"}})
    chart.validate_schema(
        {"auth": {"mode": "required", "clients": [{"san": "spiffe://x", "tenant": "a", "allow": "*"}]},
         "tls": {"enabled": True, "existingSecret": "t", "clientAuth": "required", "clientCaSecret": "ca"}}
    )


def test_production_hides_reflection_and_sets_a_tenant_request_quota():
    (configmap,) = by_kind(render(PRODUCTION), "ConfigMap")
    config = tomllib.loads(configmap["data"]["flowstate.toml"])
    assert config["server"]["reflection"] is False
    assert config["quota"]["requests_per_second"] > 0


RLS = {
    "rls": {
        "rules": {
            "edge.yaml": "domain: edge\ndescriptors:\n  - key: user\n    rate_limit: {unit: minute, requests_per_unit: 5}\n"
        }
    }
}


def test_envoy_rate_limit_rules_are_a_configmap_mounted_whole():
    """The rules are mounted as a directory (no subPath, so edits reach the pods) and flowstate
    accepts the rendered configuration with them."""
    docs = render(RLS)
    for doc in docs:
        kubernetes_validate.validate(doc, KUBE_VERSION, strict=True)
    maps = {d["metadata"]["name"]: d for d in by_kind(docs, "ConfigMap")}
    assert "edge.yaml" in maps["fs-flowstate-rls"]["data"]
    deployment, c = container(docs)
    (mount,) = [m for m in c["volumeMounts"] if m["name"] == "rls"]
    assert mount["mountPath"] == "/etc/flowstate/rls" and "subPath" not in mount
    volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
    assert volumes["rls"]["configMap"]["name"] == "fs-flowstate-rls"
    toml = tomllib.loads(maps["fs-flowstate"]["data"]["flowstate.toml"])
    assert toml["rls"]["config_path"] == "/etc/flowstate/rls"
    binary = os.environ.get("FLOWSTATE_BIN", str(ROOT / "target" / "debug" / "flowstate"))
    with tempfile.TemporaryDirectory() as d:
        (pathlib.Path(d) / "edge.yaml").write_text(maps["fs-flowstate-rls"]["data"]["edge.yaml"])
        config = pathlib.Path(d) / "flowstate.toml"
        config.write_text(maps["fs-flowstate"]["data"]["flowstate.toml"])
        env = {k: v for k, v in os.environ.items() if not k.startswith("FLOWSTATE_")}
        env.update({e["name"]: e["value"] for e in c["env"] if "value" in e})
        env["FLOWSTATE_RLS__CONFIG_PATH"] = d  # where the pod has /etc/flowstate/rls
        out = subprocess.run([binary, "--config", str(config), "config"], capture_output=True, text=True, env=env)
    assert out.returncode == 0, out.stderr
    # An existing ConfigMap instead: mounted, none rendered.
    docs = render({"rls": {"existingConfigMap": "edge-rules"}})
    assert [d["metadata"]["name"] for d in by_kind(docs, "ConfigMap")] == ["fs-flowstate"]
    deployment, _ = container(docs)
    volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
    assert volumes["rls"]["configMap"]["name"] == "edge-rules"


def test_schema_refuses_rule_files_that_are_not_yaml():
    with pytest.raises(Exception):
        render({"rls": {"rules": {"edge.txt": "domain: edge"}}})


def test_prometheus_rule_is_the_rules_file_and_passes_promtool():
    """The PrometheusRule's spec is files/prometheus-rules.yml as it is; promtool checks the rules
    and runs their unit tests (every alert fires when it should and not otherwise)."""
    docs = render({"prometheusRule": {"enabled": True, "labels": {"release": "kube-prometheus"}}})
    (rule,) = by_kind(docs, "PrometheusRule")
    assert rule["metadata"]["labels"]["release"] == "kube-prometheus"
    plain = yaml.safe_load((CHART / "files" / "prometheus-rules.yml").read_text())
    assert rule["spec"] == plain
    alerts = [r["alert"] for g in plain["groups"] for r in g["rules"] if "alert" in r]
    tests = (ROOT / "helm" / "tests" / "prometheus" / "rules.test.yml").read_text()
    for alert in alerts:
        assert f"alertname: {alert}" in tests, f"{alert} has no promtool test"
    assert not by_kind(render(None), "PrometheusRule"), "off by default"
    promtool = shutil.which("promtool")
    assert promtool, "promtool is missing: apt-get install prometheus (CI installs it)"
    with tempfile.TemporaryDirectory() as d:
        spec = pathlib.Path(d) / "from-chart.yml"
        spec.write_text(yaml.safe_dump(rule["spec"]))
        out = subprocess.run([promtool, "check", "rules", str(spec)], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
    out = subprocess.run([promtool, "test", "rules", "rules.test.yml"], capture_output=True, text=True,
                         cwd=ROOT / "helm" / "tests" / "prometheus")
    assert out.returncode == 0, out.stdout + out.stderr
