"""The FastAPI example through its test client: session cookie, 429 with Retry-After, cache."""

from __future__ import annotations

import uuid
from datetime import timedelta

from fastapi.testclient import TestClient

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
