"""An ASGI app that builds the real one on its first request.

Every Airflow component imports the plugins folder, but only the API server ever serves a request;
deferring the import keeps the Models view's code, and the libraries it loads, out of the scheduler,
the DAG processor and the triggerer, and keeps plugin import free of I/O.
"""

from __future__ import annotations

import importlib
import threading
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

Scope = MutableMapping[str, Any]
ASGIApp = Callable[[Scope, Callable[[], Awaitable[Any]], Callable[[Any], Awaitable[None]]], Awaitable[None]]


class LazyASGIApp:
    """Calls ``factory`` ("module:function", with ``kwargs``) once, on the first request, and delegates."""

    def __init__(self, factory: str, **kwargs: Any) -> None:
        self.factory = factory
        self.kwargs = kwargs
        self._app: ASGIApp | None = None
        self._lock = threading.Lock()

    def load(self) -> ASGIApp:
        if self._app is None:
            with self._lock:
                if self._app is None:
                    module, _, name = self.factory.partition(":")
                    self._app = getattr(importlib.import_module(module), name)(**self.kwargs)
        return self._app

    async def __call__(self, scope: Scope, receive: Callable[[], Awaitable[Any]],
                       send: Callable[[Any], Awaitable[None]]) -> None:
        if scope["type"] == "lifespan":  # nothing to start or stop; answer so the server is not kept waiting
            message = await receive()
            while message["type"] != "lifespan.shutdown":
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                message = await receive()
            await send({"type": "lifespan.shutdown.complete"})
            return
        await self.load()(scope, receive, send)
