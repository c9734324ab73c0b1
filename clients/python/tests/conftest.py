"""Fixtures: a private redis-server and the built flowstate binary, each on a free port."""

from __future__ import annotations

import inspect
import os
import types
import pathlib
import socket
import subprocess
import tempfile
import time

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

import flowstate

REPO = pathlib.Path(__file__).resolve().parents[3]

SERVER_CONFIG = """
[ratelimit.limits.api]
algorithm = "fixed_window"
limit = 3
period = "1h"

[cache.namespaces.user_profile]
ttl = "30m"
stale = "1m"

[semantic.namespaces.py_answers]
dimension = 64
min_similarity = 0.9
ttl = "1h"
"""


METRICS: dict[str, str] = {}
"""Metrics URL of each flowstate the fixtures started, by its gRPC address."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(check, limit: float = 10.0) -> bool:
    end = time.monotonic() + limit
    while time.monotonic() < end:
        if check():
            return True
        time.sleep(0.02)
    return False


def port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


@pytest.fixture(scope="session")
def redis_server():
    """(url, process) of the test's own redis-server."""
    for _ in range(10):
        port = free_port()
        proc = subprocess.Popen(
            ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        if wait_until(lambda: port_open(port) or proc.poll() is not None) and proc.poll() is None:
            yield f"redis://127.0.0.1:{port}", proc
            proc.kill()
            proc.wait()
            return
        proc.kill()
        proc.wait()
    pytest.fail("could not start redis-server")


FAKETIME = "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1"


def skewed_env(offset: str) -> dict[str, str]:
    """The environment of a replica whose clock is `offset` off (libfaketime, e.g. "+2", "-55"),
    monotonic clock real. A missing libfaketime would be ignored by the loader and the replica
    run unskewed, proving nothing: the test fails instead."""
    if not os.path.exists(FAKETIME):
        pytest.fail(f"{FAKETIME} is missing: apt-get install faketime (CI installs it)")
    return {"LD_PRELOAD": FAKETIME, "FAKETIME": offset, "FAKETIME_DONT_FAKE_MONOTONIC": "1"}


def binary() -> pathlib.Path:
    path = pathlib.Path(os.environ.get("FLOWSTATE_BIN", REPO / "target" / "debug" / "flowstate"))
    if not path.exists():
        pytest.fail(f"{path} is missing: run `cargo build` first (or set FLOWSTATE_BIN)")
    return path


def start_flowstate(
    redis_url: str, config_text: str, ready, port: int | None = None, env_extra: dict[str, str] | None = None
) -> tuple[subprocess.Popen, str, str]:
    """Starts the flowstate binary with `config_text` on free ports (or gRPC on `port`, so a
    restarted replica is where its clients expect it); waits until `ready(address)`. Returns
    (process, gRPC address, metrics URL)."""
    port, metrics_port = port or free_port(), free_port()
    config = tempfile.NamedTemporaryFile("w", suffix=".toml", delete=False)
    config.write(config_text)
    config.close()
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLOWSTATE_")}
    env.update(
        FLOWSTATE_REDIS__URL=redis_url,
        FLOWSTATE_SERVER__LISTEN=f"127.0.0.1:{port}",
        FLOWSTATE_METRICS__LISTEN=f"127.0.0.1:{metrics_port}",
        FLOWSTATE_LOG__LEVEL="warn",
    )
    env.update(env_extra or {})
    proc = subprocess.Popen([str(binary()), "--config", config.name], env=env)
    address = f"127.0.0.1:{port}"
    if not wait_until(lambda: ready(address), 20):
        proc.kill()
        pytest.fail("flowstate did not become ready")
    os.unlink(config.name)
    return proc, address, f"http://127.0.0.1:{metrics_port}/metrics"


def stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    proc.wait(timeout=15)


def serving(channel) -> bool:
    try:
        r = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service="readiness"), timeout=0.5)
    except grpc.RpcError:
        return False
    return r.status == health_pb2.HealthCheckResponse.SERVING


DOC_PAGES = [REPO / "README.md", *sorted((REPO / "docs").rglob("*.md"))]
"""The README and every page under docs/: the documentation whose examples the tests run."""


def doc_blocks(language: str) -> list[tuple[pathlib.Path, str]]:
    """Every fenced block of `language` in DOC_PAGES, with the page it is on, in page order."""
    import re

    return [(page, block) for page in DOC_PAGES
            for block in re.findall(rf"```{language}\n(.*?)```", page.read_text(), flags=re.S)]


def readme_semantic_config() -> str:
    """The semantic namespaces the docs configure (the semantic cache page's TOML block of
    `llm_answers` and the grpcurl example's `demo`)."""
    (block,) = [b for _, b in doc_blocks("toml") if "[semantic.namespaces.demo]" in b]
    return block


def readme_rls_rules() -> str:
    """The envoyproxy/ratelimit rules the docs show (the RLS page's YAML block for domain `edge`)."""
    (rules,) = [b for _, b in doc_blocks("yaml") if b.startswith("domain: edge")]
    return rules


@pytest.fixture(scope="session")
def target(redis_server, tmp_path_factory):
    """A flowstate on Redis, plaintext, authentication off (as on a laptop), with the docs'
    semantic namespaces and Envoy rate limit rules (so their grpcurl examples run as written)."""
    redis_url, _ = redis_server
    rules = tmp_path_factory.mktemp("rls") / "rules.yaml"
    rules.write_text(readme_rls_rules())

    def ready(address: str) -> bool:
        with grpc.insecure_channel(address) as channel:
            return serving(channel)

    config = SERVER_CONFIG + readme_semantic_config() + f'\n[rls]\nconfig_path = "{rules}"\n'
    proc, address, metrics = start_flowstate(redis_url, config, ready)
    METRICS[address] = metrics
    yield address
    stop(proc)


def openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True)


@pytest.fixture(scope="session")
def pki(tmp_path_factory):
    """A CA and a server certificate for localhost; a client CA and a client certificate whose
    subject alternative name is CLIENT_SAN. Files: ca.crt, server.{crt,key}, clients.crt,
    client.{crt,key}."""
    d = tmp_path_factory.mktemp("pki")

    def ca(name: str) -> None:
        openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-days", "2",
                "-subj", f"/CN={name}", "-addext", "basicConstraints=critical,CA:TRUE",
                "-addext", "keyUsage=critical,keyCertSign,cRLSign",
                "-keyout", str(d / f"{name}.key"), "-out", str(d / f"{name}.crt"))

    def leaf(ca_name: str, name: str, san: str, usage: str) -> None:
        (d / f"{name}.ext").write_text(
            f"basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\n"
            f"extendedKeyUsage={usage}\nsubjectAltName={san}\n"
        )
        openssl("req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
                "-subj", f"/CN={name}", "-keyout", str(d / f"{name}.key"), "-out", str(d / f"{name}.csr"))
        openssl("x509", "-req", "-in", str(d / f"{name}.csr"), "-CA", str(d / f"{ca_name}.crt"),
                "-CAkey", str(d / f"{ca_name}.key"), "-CAcreateserial", "-days", "2",
                "-extfile", str(d / f"{name}.ext"), "-out", str(d / f"{name}.crt"))

    ca("ca")
    leaf("ca", "server", "DNS:localhost,IP:127.0.0.1", "serverAuth")
    ca("clients")
    leaf("clients", "client", f"URI:{CLIENT_SAN}", "clientAuth")
    return d


CLIENT_SAN = "spiffe://flowstate.test/backend"


def new_key(tenant: str, allow: str) -> tuple[str, str]:
    """(key, keys-file line) from the real `flowstate keys new`."""
    out = subprocess.run(
        [str(binary()), "keys", "new", "--tenant", tenant, "--allow", allow],
        capture_output=True, text=True, check=True,
    ).stdout
    key, line = [l for l in out.splitlines() if not l.startswith("#")]
    return key, line


@pytest.fixture(scope="session")
def secure_target(redis_server, pki):
    """A flowstate as in production: TLS, client certificates verified when presented (the
    identity CLIENT_SAN may use the cache of tenant acme), API keys required. Yields its
    address, a key with every permission, a cache:read key, and the PKI directory."""
    redis_url, _ = redis_server
    key, key_line = new_key("acme", "*")
    read_key, read_line = new_key("acme", "cache:read")
    config = f"""
[auth]
mode = "required"
keys = '''
{key_line}
{read_line}
'''

[[auth.clients]]
san = "{CLIENT_SAN}"
tenant = "acme"
allow = "cache:*"

[server.tls]
cert_file = "{pki / 'server.crt'}"
key_file = "{pki / 'server.key'}"
client_ca_file = "{pki / 'clients.crt'}"
client_auth = "optional"

[redis]
key_prefix = "secure"
"""

    def ready(address: str) -> bool:
        creds = grpc.ssl_channel_credentials(root_certificates=(pki / "ca.crt").read_bytes())
        with grpc.secure_channel(address, creds) as channel:
            return serving(channel)

    proc, address, metrics = start_flowstate(redis_url, config, ready)
    METRICS[address] = metrics
    yield types.SimpleNamespace(address=address, key=key, read_key=read_key, pki=pki)
    stop(proc)


@pytest.fixture(params=["sync", "async"])
async def fs(request, target):
    """The sync and the asyncio client, so each test runs against both."""
    if request.param == "sync":
        client = flowstate.Client(target)
        yield client
        client.close()
    else:
        client = flowstate.AsyncClient(target)
        yield client
        await client.close()


async def ev(value):
    """Awaits coroutines (AsyncClient) and passes plain values (Client) through."""
    return await value if inspect.isawaitable(value) else value
