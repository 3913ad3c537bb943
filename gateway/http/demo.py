"""The demo page (`gateway dev`): upload files from a browser straight to S3 through the JS adapter."""

from __future__ import annotations

from pathlib import Path

from aiohttp import web

from gateway._data import data_path

STATIC_DIR = Path(__file__).resolve().parent.parent / "static"
CLIENT_DIR = data_path("clients/js")


async def index(request: web.Request) -> web.FileResponse:
    return web.FileResponse(STATIC_DIR / "index.html", headers={"Cache-Control": "no-store"})


def setup_demo(app: web.Application) -> None:
    app.router.add_get("/", index, name="public.demo")
    app.router.add_static("/static/", STATIC_DIR, name="public.static")
    # The adapter is served as the ES module apps would import.
    app.router.add_static("/clients/js/", CLIENT_DIR, name="public.client")
