"""The FastAPI example through its test client: session cookie, 429 with Retry-After, cache."""

from __future__ import annotations

import uuid
from datetime import timedelta

import pytest
from fastapi import WebSocketDisconnect
from fastapi.testclient import TestClient

import flowstate

from examples.fastapi_app import create_app
from flowstate import Limit


def test_login_profile_rate_limit_and_logout(target):
    loads = []

    def load_profile(user: str) -> dict:
        loads.append(user)
        return {"user": user, "plan": "pro"}

    app = create_app(
        target,
        per_user=Limit("fixed_window", limit=3, period=timedelta(hours=1)),
        load_profile=load_profile,
        secure_cookie=False,
    )
    user = f"u-{uuid.uuid4().hex[:8]}"
    with TestClient(app) as http:
        assert http.get("/me").status_code == 401
        login = http.post("/login", params={"user": user})
        assert login.status_code == 200 and "sid" in login.cookies
        for _ in range(3):
            r = http.get("/me")
            assert r.status_code == 200, r.text
            assert r.json() == {"user": user, "profile": {"user": user, "plan": "pro"}}
        assert loads == [user], "the profile is loaded once, then served from the cache"
        limited = http.get("/me")
        assert limited.status_code == 429
        assert 1 <= int(limited.headers["Retry-After"]) <= 3600
        assert http.post("/logout").status_code == 200
        assert http.get("/me").status_code == 401


def test_websocket_relays_a_topic_and_resumes_after_a_position(target):
    topic = f"campaign:{uuid.uuid4().hex[:8]}"
    app = create_app(target, secure_cookie=False)
    with TestClient(app) as http, flowstate.Client(target) as fs:
        ids = [fs.events.publish(topic, f"update {i}".encode(), key="campaign") for i in range(3)]
        # Not logged in: refused.
        with pytest.raises(WebSocketDisconnect) as refused:
            with http.websocket_connect(f"/live/{topic}") as ws:
                ws.receive_json()
        assert refused.value.code == 4401
        http.post("/login", params={"user": "ws-user"})
        # A browser that saw the first update reconnects after it: it gets the rest, then live ones.
        with http.websocket_connect(f"/live/{topic}?after={ids[0]}") as ws:
            assert ws.receive_json() == {"topic": topic, "id": ids[1], "key": "campaign", "payload": "update 1"}
            assert ws.receive_json()["id"] == ids[2]
            live = fs.events.publish(topic, b"update 3")
            assert ws.receive_json() == {"topic": topic, "id": live, "key": "", "payload": "update 3"}
