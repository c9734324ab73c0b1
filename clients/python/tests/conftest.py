"""Fixtures: a private redis-server and the built flowstate binary, each on a free port."""

from __future__ import annotations

import inspect
import os
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


@pytest.fixture(scope="session")
def target(redis_server):
    redis_url, _ = redis_server
    binary = pathlib.Path(os.environ.get("FLOWSTATE_BIN", REPO / "target" / "debug" / "flowstate"))
    if not binary.exists():
        pytest.fail(f"{binary} is missing: run `cargo build` first (or set FLOWSTATE_BIN)")
    port = free_port()
    metrics_port = free_port()
    config = tempfile.NamedTemporaryFile("w", suffix=".toml", delete=False)
    config.write(SERVER_CONFIG)
    config.close()
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLOWSTATE_")}
    env.update(
        FLOWSTATE_REDIS__URL=redis_url,
        FLOWSTATE_SERVER__LISTEN=f"127.0.0.1:{port}",
        FLOWSTATE_METRICS__LISTEN=f"127.0.0.1:{metrics_port}",
        FLOWSTATE_LOG__LEVEL="warn",
    )
    proc = subprocess.Popen([str(binary), "--config", config.name], env=env)
    address = f"127.0.0.1:{port}"

    def ready() -> bool:
        with grpc.insecure_channel(address) as channel:
            try:
                r = health_pb2_grpc.HealthStub(channel).Check(
                    health_pb2.HealthCheckRequest(service="readiness"), timeout=0.5
                )
            except grpc.RpcError:
                return False
            return r.status == health_pb2.HealthCheckResponse.SERVING

    if not wait_until(ready, 20):
        proc.kill()
        pytest.fail("flowstate did not become ready")
    METRICS[address] = f"http://127.0.0.1:{metrics_port}/metrics"
    yield address
    proc.terminate()
    proc.wait(timeout=15)
    os.unlink(config.name)


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
