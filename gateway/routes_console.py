"""The web console: static files of ``gateway/console/`` served at ``/`` and its deep links.

The console is a client of the public REST API and execution streams only. Every page
path (``/``, ``/executions``, ``/executions/<id>``, ``/approvals``, ``/runbooks``, ``/triggers`` and
anything under them) answers the one ``index.html``; the browser-side router picks the
page. Assets are under ``/console/``. Every answer carries a strong ``ETag`` (the
SHA-256 of the file) with ``Cache-Control: no-cache``, so browsers revalidate cheaply
(304) and never run a stale script after an upgrade; a Content-Security-Policy allows
nothing from another origin.
"""

from __future__ import annotations

import hashlib
import pathlib

import attrs
from quart import Response, request
from quart_trio import QuartTrio

from gateway.problems import problem_response

FILES = pathlib.Path(__file__).resolve().parent / "console"
PAGES = ("executions", "approvals", "runbooks", "triggers")
TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8",
         ".css": "text/css; charset=utf-8", ".svg": "image/svg+xml", ".png": "image/png"}
HEADERS = {
    "Cache-Control": "no-cache",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Content-Security-Policy": "default-src 'self'; connect-src 'self'; img-src 'self' data:; "
                               "style-src 'self'; script-src 'self'; frame-ancestors 'none'; base-uri 'none'",
}


@attrs.frozen
class Asset:
    body: bytes
    content_type: str
    etag: str


def load_assets(directory: pathlib.Path = FILES) -> dict[str, Asset]:
    """Every file of the console, by its name relative to ``directory``."""
    assets = {}
    for path in sorted(directory.rglob("*")):
        if path.is_file() and path.suffix in TYPES:
            body = path.read_bytes()
            assets[path.relative_to(directory).as_posix()] = Asset(
                body, TYPES[path.suffix], '"' + hashlib.sha256(body).hexdigest()[:32] + '"')
    return assets


def register_console(app: QuartTrio) -> None:
    assets = load_assets()

    async def page(**_: str) -> Response:
        return _answer(assets["index.html"])

    async def asset(name: str) -> Response:
        found = assets.get(name)
        if found is None:
            return problem_response(404, f"no console file {name!r}")
        return _answer(found)

    app.add_url_rule("/", endpoint="console", view_func=page, methods=["GET"])
    for name in PAGES:
        app.add_url_rule(f"/{name}", endpoint=f"console_{name}", view_func=page, methods=["GET"])
        app.add_url_rule(f"/{name}/<path:rest>", endpoint=f"console_{name}_deep", view_func=page, methods=["GET"])
    app.add_url_rule("/console/<path:name>", endpoint="console_asset", view_func=asset, methods=["GET"])


def _answer(found: Asset) -> Response:
    if found.etag in request.headers.get("If-None-Match", ""):
        response = Response(b"", status=304)
    else:
        response = Response(found.body, status=200, content_type=found.content_type)
    response.headers.update(HEADERS)
    response.headers["ETag"] = found.etag
    return response
