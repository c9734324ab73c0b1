"""A real Prometheus (Debian's `prometheus`) scraping a running flowstate with the SLO rules of
`helm/flowstate/files/prometheus-rules.yml`: after a known workload, the recording rules read back
over Prometheus's HTTP API equal what the calls made (cache hit rate = hits / lookups, rate-limit
denial ratio = denied / decisions, no availability errors)."""

from __future__ import annotations

import json
import shutil
import subprocess
import urllib.parse
import urllib.request
from datetime import timedelta

import pytest

import flowstate
from conftest import REPO, free_port, port_open, start_flowstate, stop, wait_until

CONFIG = """
[ratelimit.limits.prom]
algorithm = "fixed_window"
limit = 90
period = "1h"

[cache.namespaces.prom_ns]
ttl = "5m"

[metrics]
enabled = true
"""


def query(prom: str, expr: str) -> list[dict]:
    url = f"{prom}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    body = json.load(urllib.request.urlopen(url, timeout=5))
    assert body["status"] == "success", body
    return body["data"]["result"]


def value(prom: str, expr: str) -> float | None:
    result = query(prom, expr)
    return float(result[0]["value"][1]) if result else None


@pytest.fixture(scope="module")
def prometheus(redis_server, tmp_path_factory):
    binary = shutil.which("prometheus")
    if binary is None:
        pytest.fail("no prometheus: apt-get install prometheus (CI installs it)")
    redis_url, _ = redis_server
    flowstate_proc, address, metrics = start_flowstate(
        redis_url, CONFIG, lambda a: port_open(int(a.rsplit(":", 1)[1])),
        env_extra={"FLOWSTATE_REDIS__KEY_PREFIX": "prom"},
    )
    d = tmp_path_factory.mktemp("prometheus")
    target = urllib.parse.urlparse(metrics).netloc
    rules = REPO / "helm" / "flowstate" / "files" / "prometheus-rules.yml"
    (d / "prometheus.yml").write_text(
        f"""
global:
  scrape_interval: 1s
  evaluation_interval: 1s
rule_files: ["{rules}"]
scrape_configs:
  - job_name: flowstate
    static_configs: [{{targets: ["{target}"]}}]
"""
    )
    port = free_port()
    log = open(d / "prometheus.log", "w")
    proc = subprocess.Popen(
        [binary, f"--config.file={d / 'prometheus.yml'}", f"--storage.tsdb.path={d / 'data'}",
         f"--web.listen-address=127.0.0.1:{port}"],
        stdout=log, stderr=subprocess.STDOUT,
    )
    prom = f"http://127.0.0.1:{port}"

    def up() -> bool:
        try:
            return value(prom, 'up{job="flowstate"}') == 1.0
        except OSError:
            return False

    if not wait_until(up, 30):
        proc.kill()
        stop(flowstate_proc)
        pytest.fail("Prometheus did not scrape flowstate:\n" + (d / "prometheus.log").read_text()[-3000:])
    yield address, prom
    proc.terminate()
    proc.wait(timeout=15)
    log.close()
    stop(flowstate_proc)


def test_recording_rules_match_the_calls_made(prometheus):
    address, prom = prometheus
    with flowstate.Client(address) as fs:
        # A configured namespace's counters exist from start-up at 0: once scraped, the rates
        # count exactly the workload that follows (every series starting at 0, Prometheus
        # extrapolates them alike, so the ratios are exact).
        assert wait_until(
            lambda: value(prom, 'flowstate_cache_requests_total{namespace="prom_ns",result="miss"}') == 0.0, 30
        )
        for i in range(10):
            fs.cache.set("prom_ns", f"k{i}", b"v", ttl=timedelta(minutes=5))
        hits = misses = 0
        for i in range(100):
            found = fs.cache.get("prom_ns", f"k{i % 12}").found  # k10, k11 miss
            hits += found
            misses += not found
        denied = 0
        for _ in range(100):
            denied += not fs.ratelimit.check([("prom", "user-1")]).allowed
    assert (hits, misses, denied) == (84, 16, 10)
    assert wait_until(
        lambda: value(prom, 'flowstate_cache_requests_total{namespace="prom_ns",result="hit"}') == hits, 30
    )
    # The rules run every second on what was scraped: poll until they have seen the last scrape.
    want = {
        'flowstate:cache_hit:ratio_rate5m{namespace="prom_ns"}': hits / (hits + misses),
        'flowstate:ratelimit_denied:ratio_rate5m{limit="prom"}': denied / 100,
    }
    got: dict[str, float | None] = {}

    def settled() -> bool:
        got.update({expr: value(prom, expr) for expr in want})
        return all(got[e] is not None and abs(got[e] - w) < 1e-9 for e, w in want.items())

    assert wait_until(settled, 20), f"recording rules {got}, calls made {want}"
    assert value(prom, "flowstate:slo_availability_errors:ratio_rate5m") == 0.0
    # Every alert of the file is loaded, and none fires on a healthy flowstate.
    rules = json.load(urllib.request.urlopen(f"{prom}/api/v1/rules", timeout=5))["data"]["groups"]
    alerts = {r["name"]: r["state"] for g in rules for r in g["rules"] if r["type"] == "alerting"}
    assert len(alerts) >= 12, alerts
    assert all(state == "inactive" for state in alerts.values()), alerts
