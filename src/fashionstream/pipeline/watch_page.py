"""The watch's web server (aiohttp): the page, a live event stream, and the same data as JSON.

- `GET /` the page (watch.html: one static file, inline script, no build step, no CDN);
- `GET /events` server-sent events: a JSON snapshot of the `WatchState` whenever it changed, at most
  `SEND_EVERY_S` apart, and at least every `REFRESH_S` so that the charts' window keeps sliding;
- `GET /state` the current snapshot as JSON (for scripts, and to check the page against).

The readers update the state on their own threads; handlers copy it under the shared lock and
serialise it outside.
"""

from __future__ import annotations

import asyncio
import importlib.resources
import json
import threading
from collections.abc import Callable
from typing import Any

from aiohttp import web

from fashionstream.pipeline.watch import WatchState

SEND_EVERY_S = 0.5
REFRESH_S = 2.0
PAGE = importlib.resources.files("fashionstream.pipeline").joinpath("watch.html").read_text(encoding="utf-8")


def make_app(state: WatchState, lock: threading.Lock, stop: threading.Event) -> web.Application:
    def snapshot() -> dict[str, Any]:
        with lock:
            return state.snapshot()

    async def page(request: web.Request) -> web.Response:
        return web.Response(text=PAGE, content_type="text/html")

    async def current(request: web.Request) -> web.Response:
        return web.json_response(snapshot())

    async def events(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
        )
        await response.prepare(request)
        sent_version, waited = -1, REFRESH_S
        while not stop.is_set():
            if state.version != sent_version or waited >= REFRESH_S:
                doc = snapshot()
                sent_version, waited = doc["version"], 0.0
                await response.write(b"data: " + json.dumps(doc, separators=(",", ":")).encode() + b"\n\n")
            await asyncio.sleep(SEND_EVERY_S)
            waited += SEND_EVERY_S
        return response

    app = web.Application()
    app.router.add_get("/", page)
    app.router.add_get("/events", events)
    app.router.add_get("/state", current)
    return app


async def serve(
    state: WatchState,
    lock: threading.Lock,
    stop: threading.Event,
    host: str,
    port: int,
    on_ready: Callable[[int], None],
) -> None:
    """Serve the page on host:port until `stop` is set; `on_ready(port)` once listening (port 0 picks one)."""
    runner = web.AppRunner(make_app(state, lock, stop), handle_signals=False)
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port)
        await site.start()
        on_ready(int(runner.addresses[0][1]))
        while not stop.is_set():
            await asyncio.sleep(0.2)
    finally:
        await runner.cleanup()
