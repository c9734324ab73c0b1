"""The few primitives in which the asyncio and the synchronous client differ, side by side.

The asyncio source (`flowstate/_async`) uses the `Async*` and `async_*` names below;
`clients/python/unasync.py` writes the sync client (`flowstate/_sync`) from it with the plain
names (`AsyncEvent` -> `Event`, `async_sleep` -> `sleep`, ...). Everything else in the two
flavours is the same code but for `async` and `await`.
"""

from __future__ import annotations

import asyncio
import inspect
import signal
import threading
import time
from typing import Any, AsyncContextManager, Awaitable, Callable, TypeVar, Union

T = TypeVar("T")
_STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)

# -- asyncio ---------------------------------------------------------------------------------


class AsyncEvent(asyncio.Event):
    """`asyncio.Event` whose `wait` takes a timeout, as `threading.Event`'s does."""

    async def wait(self, timeout: float | None = None) -> bool:  # type: ignore[override]
        """Whether it is set, once it is or after `timeout` seconds."""
        if timeout is None:
            return await super().wait()
        try:
            await asyncio.wait_for(super().wait(), timeout)
        except asyncio.TimeoutError:
            pass
        return self.is_set()


AsyncMutex = asyncio.Lock
AsyncCancelled = asyncio.CancelledError
async_sleep = asyncio.sleep


class AsyncBackground:
    """A coroutine function run as a task of the running loop."""

    def __init__(self, run: Callable[[], Awaitable[Any]], name: str) -> None:
        self._task = asyncio.get_running_loop().create_task(run(), name=name)

    async def cancel(self) -> None:
        """Cancels it and waits until it ended."""
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)

    async def join(self, timeout: float | None = None) -> None:
        """Waits until it ended, at most `timeout` seconds (what it raised is not raised here)."""
        await asyncio.wait({self._task}, timeout=timeout)


async def async_resolve(value: Union[T, Awaitable[T]]) -> T:
    """What a callback gave: awaited when it is awaitable (a coroutine function's result)."""
    return await value if inspect.isawaitable(value) else value  # type: ignore[return-value]


def _is_async(fn: Callable[..., Any]) -> bool:
    """A coroutine function, or an object whose `__call__` is one."""
    return inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(getattr(fn, "__call__", None))


async def async_call(fn: Callable[..., Any], *args: Any) -> Any:
    """Awaits a coroutine function; runs a plain function in a thread (the loop keeps going)."""
    if _is_async(fn):
        return await fn(*args)
    return await async_resolve(await asyncio.to_thread(fn, *args))


def async_on_signals(stop: Callable[[], None]) -> None:
    """Calls `stop` on SIGTERM and SIGINT (where the loop can handle signals)."""
    loop = asyncio.get_running_loop()
    for sig in _STOP_SIGNALS:
        try:
            loop.add_signal_handler(sig, stop)
        except (NotImplementedError, RuntimeError, ValueError):
            pass


class _AsyncHeld:
    def __init__(self, acquire: Callable[..., Awaitable[Any]], args: tuple[Any, ...]) -> None:
        self._acquire = acquire
        self._args = args
        self._held: Any = None

    async def __aenter__(self) -> Any:
        self._held = await self._acquire(*self._args)
        return await self._held.__aenter__()

    async def __aexit__(self, *exc: Any) -> Any:
        return await self._held.__aexit__(*exc)


def async_held(acquire: Callable[..., Awaitable[T]], *args: Any) -> AsyncContextManager[T]:
    """`async with` this: awaits `acquire(*args)` on entry (an async context manager) and
    enters and exits what it gave."""
    return _AsyncHeld(acquire, args)


# -- synchronous -----------------------------------------------------------------------------

Event = threading.Event
Mutex = threading.Lock
sleep = time.sleep


class Cancelled(BaseException):
    """Never raised: a sync call is cancelled with an RpcError (CANCELLED), handled as such."""


class Background:
    """A function run on a daemon thread."""

    def __init__(self, run: Callable[[], Any], name: str) -> None:
        self._thread = threading.Thread(target=run, name=name, daemon=True)
        self._thread.start()

    def cancel(self) -> None:
        """Nothing: a thread cannot be cancelled; it ends on its own (what it waits for was
        set) or with the process."""

    def join(self, timeout: float | None = None) -> None:
        """Waits until it ended, at most `timeout` seconds (not when called from it)."""
        if self._thread is not threading.current_thread():
            self._thread.join(timeout)


def resolve(value: T) -> T:
    return value


def call(fn: Callable[..., T], *args: Any) -> T:
    return fn(*args)


def on_signals(stop: Callable[[], None]) -> None:
    """Calls `stop` on SIGTERM and SIGINT (only the main thread can handle signals)."""
    if threading.current_thread() is threading.main_thread():
        for sig in _STOP_SIGNALS:
            signal.signal(sig, lambda *_: stop())


def held(acquire: Callable[..., T], *args: Any) -> T:
    """`acquire(*args)` at once: what it gives is the context manager."""
    return acquire(*args)
