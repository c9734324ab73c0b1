"""The Grafana dashboard is generated (never hand-edited), every panel query is valid PromQL
(promtool parses it, as a recording rule), and names only metrics flowstate exports or recording
rules of helm/flowstate/files/prometheus-rules.yml."""

import json
import pathlib
import re
import shutil
import subprocess
import sys
import tempfile

import yaml

ROOT = pathlib.Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "helm" / "flowstate" / "files" / "grafana-dashboard.json"
RULES = ROOT / "helm" / "flowstate" / "files" / "prometheus-rules.yml"


def exprs() -> list[str]:
    panels = json.loads(DASHBOARD.read_text())["panels"]
    return [t["expr"] for p in panels for t in p.get("targets") or []]


def test_the_committed_dashboard_is_what_the_generator_makes():
    out = subprocess.run([sys.executable, str(ROOT / "helm" / "dashboard" / "generate.py"), "--check"],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr


def test_every_panel_query_parses():
    queries = exprs()
    assert len(queries) >= 30
    promtool = shutil.which("promtool")
    assert promtool, "promtool is missing: apt-get install prometheus (CI installs it)"
    rules = {"groups": [{"name": "dashboard", "rules": [
        {"record": f"dashboard:panel_{i}", "expr": e} for i, e in enumerate(queries)
    ]}]}
    with tempfile.NamedTemporaryFile("w", suffix=".yml") as f:
        yaml.safe_dump(rules, f)
        f.flush()
        out = subprocess.run([promtool, "check", "rules", f.name], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


def exported_metrics() -> set[str]:
    """Every metric name flowstate's source registers (string literals `"flowstate_…"`)."""
    names = set()
    for path in (ROOT / "src").rglob("*.rs"):
        names.update(re.findall(r'"(flowstate_[a-z0-9_]+)"', path.read_text()))
    return names


def test_every_query_names_only_what_flowstate_exports():
    metrics = exported_metrics()
    assert "flowstate_rpc_requests_total" in metrics
    rules = yaml.safe_load(RULES.read_text())
    recorded = {r["record"] for g in rules["groups"] for r in g["rules"] if "record" in r}
    for expr in exprs():
        for name in re.findall(r"\b(flowstate_[a-z0-9_]+)", expr):
            base = re.sub(r"_(bucket|count|sum)$", "", name)
            assert name in metrics or base in metrics, f"{expr}: {name} is not a flowstate metric"
        for name in re.findall(r"\b(flowstate:[a-z0-9_:]+)", expr):
            assert name in recorded, f"{expr}: {name} is not a recording rule of {RULES.name}"
