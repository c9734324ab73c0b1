"""Generates flowstate's Grafana dashboard (helm/flowstate/files/grafana-dashboard.json) from code,
with the Grafana Foundation SDK (PyPI `grafana-foundation-sdk`), so it is reviewed as code and
never hand-edited:

    python helm/dashboard/generate.py            # write the JSON
    python helm/dashboard/generate.py --check    # fail if the committed JSON differs

Panels read flowstate's metrics and the recording rules of helm/flowstate/files/prometheus-rules.yml
(helm/tests/test_dashboard.py checks every query parses and names only what flowstate exports).
"""

from __future__ import annotations

import json
import pathlib
import sys

from grafana_foundation_sdk.builders.dashboard import Dashboard, Row
from grafana_foundation_sdk.builders.prometheus import Dataquery
from grafana_foundation_sdk.builders.timeseries import Panel as Timeseries
from grafana_foundation_sdk.cog.encoder import JSONEncoder

ROOT = pathlib.Path(__file__).resolve().parents[2]
OUT = ROOT / "helm" / "flowstate" / "files" / "grafana-dashboard.json"
DOC = ROOT / "docs" / "DASHBOARD.md"

# (row, [(title, unit, [(expr, legend)])])
ROWS: list[tuple[str, list[tuple[str, str, list[tuple[str, str]]]]]] = [
    ("Traffic and SLOs", [
        ("Requests per second by service", "reqps",
         [("sum by (service) (flowstate:rpc_requests:rate5m)", "{{service}}")]),
        ("Errors by code (not OK)", "reqps",
         [('sum by (code) (flowstate:rpc_requests:rate5m{code!="OK"})', "{{code}}")]),
        ("Latency p50 / p99 (all methods)", "s",
         [('histogram_quantile(0.5, sum by (le) (rate(flowstate_rpc_duration_seconds_bucket{service!~"grpc\\\\..*"}[5m])))', "p50"),
          ('histogram_quantile(0.99, sum by (le) (rate(flowstate_rpc_duration_seconds_bucket{service!~"grpc\\\\..*"}[5m])))', "p99")]),
        ("Latency p99 by method", "s",
         [("flowstate:rpc_duration_seconds:p99_rate5m", "{{service}}/{{method}}")]),
        ("Availability SLO burn rate (1 = budget spent in 30 days)", "none",
         [("flowstate:slo_availability_errors:ratio_rate1h / 0.001", "1h"),
          ("flowstate:slo_availability_errors:ratio_rate6h / 0.001", "6h"),
          ("flowstate:slo_availability_errors:ratio_rate3d / 0.001", "3d")]),
        ("Latency SLO burn rate (99 % within 10 ms)", "none",
         [("flowstate:slo_latency_errors:ratio_rate1h / 0.01", "1h"),
          ("flowstate:slo_latency_errors:ratio_rate6h / 0.01", "6h")]),
        ("Load shed (RESOURCE_EXHAUSTED at the concurrency limit)", "reqps",
         [("sum by (instance) (rate(flowstate_admission_shed_total[5m]))", "{{instance}}")]),
    ]),
    ("Cache and rate limits", [
        ("Cache hit rate by namespace", "percentunit",
         [("flowstate:cache_hit:ratio_rate5m", "{{namespace}}")]),
        ("Cache lookups by result", "reqps",
         [("sum by (result) (rate(flowstate_cache_requests_total[5m]))", "{{result}}")]),
        ("Rate-limit decisions", "reqps",
         [("sum by (limit, decision) (rate(flowstate_ratelimit_decisions_total[5m]))", "{{limit}} {{decision}}")]),
        ("Rate-limit denial ratio", "percentunit",
         [("flowstate:ratelimit_denied:ratio_rate5m", "{{limit}}")]),
        ("Envoy RLS requests by domain and code", "reqps",
         [("sum by (domain, code) (rate(flowstate_rls_requests_total[5m]))", "{{domain}} {{code}}")]),
        ("Envoy RLS hits by result", "short",
         [("sum by (result) (rate(flowstate_rls_hits_total[5m]))", "{{result}}")]),
        ("Near-cache lookups by namespace and result", "reqps",
         [("sum by (namespace, result) (rate(flowstate_cache_near_requests_total[5m]))",
           "{{namespace}} {{result}}")]),
        ("Semantic cache hit rate by namespace", "percentunit",
         [('sum by (namespace) (rate(flowstate_semantic_requests_total{result="hit"}[5m])) '
           "/ sum by (namespace) (rate(flowstate_semantic_requests_total[5m]))", "{{namespace}}")]),
        ("Semantic index entries per replica (and tracking up)", "short",
         [("max by (instance) (flowstate_semantic_index_entries)", "{{instance}} entries"),
          ("min by (instance) (flowstate_semantic_tracking)", "{{instance}} tracking")]),
    ]),
    ("Store", [
        ("Store up", "none", [("min by (instance) (flowstate_store_up)", "{{instance}}")]),
        ("Store p99 by operation", "s", [("flowstate:store_duration_seconds:p99_rate5m", "{{op}}")]),
        ("Store errors by kind", "reqps",
         [("sum by (kind) (rate(flowstate_store_errors_total[5m]))", "{{kind}}")]),
        ("Pool connections and waiting callers", "short",
         [("sum by (state) (flowstate_store_pool_connections)", "{{state}}"),
          ("sum(flowstate_store_pool_waiting)", "waiting")]),
        ("Memory store budget used", "percentunit",
         [("flowstate_memory_used_bytes / flowstate_memory_max_bytes", "{{instance}}")]),
    ]),
    ("Capacity (docs/CAPACITY.md: which limit comes first)", [
        ("CPU cores per replica", "short",
         [("flowstate:process_cpu_cores:rate5m", "{{instance}}")]),
        ("Redis round trips per second by operation", "reqps",
         [("sum by (op) (flowstate:store_calls:rate5m)", "{{op}}")]),
        ("Pool connections in use / open", "percentunit",
         [('sum by (instance) (flowstate_store_pool_connections{state="in_use"}) '
           '/ sum by (instance) (flowstate_store_pool_connections{state="open"})', "{{instance}}")]),
        ("Resident memory per replica", "bytes",
         [("process_resident_memory_bytes and on (instance, job) flowstate_build_info", "{{instance}}")]),
    ]),
    ("Sessions, locks, events", [
        ("Session events", "reqps", [("sum by (event) (rate(flowstate_sessions_total[5m]))", "{{event}}")]),
        ("Lock acquires by outcome", "reqps",
         [("sum by (outcome) (rate(flowstate_lock_acquires_total[5m]))", "{{outcome}}")]),
        ("Lock wait p99", "s",
         [("histogram_quantile(0.99, sum by (le) (rate(flowstate_lock_wait_seconds_bucket[5m])))", "p99")]),
        ("Events published and delivered", "reqps",
         [("sum(rate(flowstate_events_published_total[5m]))", "published"),
          ("sum(rate(flowstate_events_delivered_total[5m]))", "delivered")]),
        ("Subscribers and feeds", "short",
         [("sum(flowstate_events_subscribers)", "subscribers"), ("sum(flowstate_events_feeds)", "feeds")]),
    ]),
    ("Queues and usage", [
        ("Jobs by outcome", "reqps",
         [("sum by (queue) (rate(flowstate_queue_jobs_enqueued_total[5m]))", "{{queue}} enqueued"),
          ("sum by (queue) (rate(flowstate_queue_jobs_succeeded_total[5m]))", "{{queue}} succeeded"),
          ("sum by (queue) (rate(flowstate_queue_jobs_failed_total[5m]))", "{{queue}} failed"),
          ("sum by (queue) (rate(flowstate_queue_jobs_dead_total[5m]))", "{{queue}} dead")]),
        ("Queue wait p99 (due to start)", "s",
         [("histogram_quantile(0.99, sum by (le, queue) (rate(flowstate_queue_wait_duration_seconds_bucket[5m])))", "{{queue}}")]),
        ("Ready jobs", "short", [("max by (queue) (flowstate_queue_ready_jobs)", "{{queue}}")]),
        ("Usage events recorded by metric", "reqps",
         [("sum by (metric) (rate(flowstate_usage_events_total[5m]))", "{{metric}}")]),
    ]),
]


def dashboard() -> Dashboard:
    d = (
        Dashboard("flowstate")
        .uid("flowstate")
        .tags(["flowstate"])
        .refresh("30s")
        .time("now-1h", "now")
    )
    for row, panels in ROWS:
        d = d.with_row(Row(row))
        for title, unit, queries in panels:
            panel = Timeseries().title(title).unit(unit)
            for i, (expr, legend) in enumerate(queries):
                panel = panel.with_target(Dataquery().expr(expr).legend_format(legend).ref_id("ABCDEFGH"[i]))
            d = d.with_panel(panel)
    return d


def render() -> str:
    return json.dumps(dashboard().build(), cls=JSONEncoder, indent=2, sort_keys=True) + "\n"


def panel_list() -> str:
    lines = [
        "# flowstate's Grafana dashboard",
        "",
        "`helm/flowstate/files/grafana-dashboard.json` (uid `flowstate`), generated by",
        "`helm/dashboard/generate.py` with the Grafana Foundation SDK; this list is generated with it.",
        "Import the JSON in Grafana with a Prometheus data source that scrapes flowstate and loads",
        "`helm/flowstate/files/prometheus-rules.yml` (the recording rules `flowstate:…`).",
        "",
    ]
    for row, panels in ROWS:
        lines.append(f"## {row}")
        lines.append("")
        for title, unit, queries in panels:
            exprs = "; ".join(f"`{e}`" for e, _ in queries)
            lines.append(f"- **{title}** ({unit}): {exprs}")
        lines.append("")
    return "\n".join(lines)


def main() -> int:
    outputs = {OUT: render(), DOC: panel_list()}
    if "--check" in sys.argv:
        stale = [p for p, text in outputs.items() if not p.exists() or p.read_text() != text]
        if stale:
            print(f"{', '.join(map(str, stale))}: not what helm/dashboard/generate.py makes: run it and commit",
                  file=sys.stderr)
            return 1
        print("the dashboard and its panel list match their generator")
        return 0
    for path, text in outputs.items():
        path.write_text(text)
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
