"""A FastAPI backend using flowstate the way the platform does: a session cookie, a per-user rate
limit answering 429 with Retry-After, and a stampede-safe profile cache.

    FLOWSTATE_TARGET=127.0.0.1:50051 uvicorn examples.fastapi_app:app
"""

from __future__ import annotations

import json
import math
import os
from contextlib import asynccontextmanager
from datetime import timedelta
from typing import AsyncIterator, Callable

from fastapi import FastAPI, HTTPException, Request, Response, WebSocket, WebSocketDisconnect
from fastapi.responses import JSONResponse

from flowstate import AsyncClient, InvalidArgument, Limit, NotFound, RateLimited

COOKIE = "sid"


def create_app(
    target: str,
    *,
    per_user: Limit = Limit("sliding_window", limit=100, period=timedelta(minutes=1)),
    load_profile: Callable[[str], dict] | None = None,
    secure_cookie: bool = True,
) -> FastAPI:
    """The app, talking to flowstate at `target`. `load_profile` stands in for the database."""
    load = load_profile or (lambda user: {"user": user, "plan": "pro"})

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # One client per process, created inside the event loop, closed on shutdown.
        app.state.fs = AsyncClient(target, timeout=1.0)
        yield
        await app.state.fs.close()

    app = FastAPI(lifespan=lifespan)

    async def current_session(request: Request):
        sid = request.cookies.get(COOKIE)
        if not sid:
            raise HTTPException(401, "log in first")
        try:
            return await request.app.state.fs.sessions.get(sid, touch=True)
        except (NotFound, InvalidArgument):
            raise HTTPException(401, "session expired") from None

    @app.exception_handler(RateLimited)
    async def too_many(request: Request, exc: RateLimited) -> JSONResponse:
        retry = max(1, math.ceil(exc.retry_after.total_seconds()))
        return JSONResponse({"detail": "rate limited"}, status_code=429, headers={"Retry-After": str(retry)})

    @app.post("/login")
    async def login(user: str, response: Response) -> dict:
        session = await app.state.fs.sessions.create(user_id=user, metadata={"via": "fastapi-example"})
        response.set_cookie(COOKIE, session.id, httponly=True, secure=secure_cookie, samesite="lax")
        return {"handle": session.handle}

    @app.get("/me")
    async def me(request: Request) -> dict:
        session = await current_session(request)
        await app.state.fs.ratelimit.enforce([(per_user, session.user_id)])
        profile = await app.state.fs.cache.get_or_compute(
            "user_profile",
            session.user_id,
            lambda: json.dumps(load(session.user_id)).encode(),
            ttl=timedelta(minutes=30),
        )
        return {"user": session.user_id, "profile": json.loads(profile)}

    @app.post("/logout")
    async def logout(request: Request, response: Response) -> dict:
        session = await current_session(request)
        await app.state.fs.sessions.delete(handle=session.handle)
        response.delete_cookie(COOKIE)
        return {"ok": True}

    @app.websocket("/live/{topic}")
    async def live(websocket: WebSocket, topic: str) -> None:
        """Relays a topic's events to the browser as JSON, one message per event. This is how
        a browser gets real-time updates: through the app, never by talking to Redis. The
        browser reconnects with `?after=<last id>` and misses nothing the topic still holds."""
        sid = websocket.cookies.get(COOKIE)
        try:
            await websocket.app.state.fs.sessions.get(sid or "")
        except (NotFound, InvalidArgument):
            await websocket.close(code=4401)
            return
        await websocket.accept()
        after = websocket.query_params.get("after")
        subscription = websocket.app.state.fs.events.subscribe([topic], after={topic: after} if after else None)
        try:
            async for event in subscription:
                await websocket.send_json(
                    {"topic": event.topic, "id": event.id, "key": event.key, "payload": event.payload.decode()}
                )
        except WebSocketDisconnect:
            pass
        finally:
            subscription.close()

    return app


app = create_app(os.environ.get("FLOWSTATE_TARGET", "127.0.0.1:50051"))
