"""Stand-in services for the example runbooks, so `make run` and the README's curl session
work on a laptop: CI, environments, deployments, alert analysis, a mail gateway, a sandbox.

    python examples/demo_services.py --port 3001     # --port 0: any free port

Once it listens it prints one line, ``demo services on http://127.0.0.1:PORT``, and it
stops cleanly on SIGINT or SIGTERM.

Every answer is canned on purpose (this is a demo peer, not part of the engine). Paths the
examples do not use answer 200 `{"ok": true}`.
"""

from __future__ import annotations

import argparse
import hashlib
import signal
from functools import partial
from typing import Any

import trio
from hypercorn.config import Config
from hypercorn.trio import serve
from quart import request
from quart_trio import QuartTrio

from gateway.connection import CompleteExchange

app = QuartTrio("demo-services")
# (an answer that goes out before a POST's body has arrived must not leave the connection
# stuck: the gateway's own guard, see gateway/connection.py)
app.asgi_app = CompleteExchange(app.asgi_app)  # type: ignore[method-assign]


@app.get("/ci/builds/<service>/<version>")
async def build(service: str, version: str) -> Any:
    commit = hashlib.sha1(f"{service}@{version}".encode()).hexdigest()[:12]
    return {"service": service, "version": version, "status": "green", "commit": commit,
            "artifact": f"registry.example.com/{service}:{version}"}


@app.get("/environments/<environment>/health")
async def health(environment: str) -> Any:
    return {"environment": environment, "status": "healthy"}


@app.post("/deployments")
async def deploy() -> Any:
    body = await request.get_json(silent=True) or {}
    key = request.headers.get("Idempotency-Key", "")
    deployment = hashlib.sha256(key.encode()).hexdigest()[:12]
    return {"deploymentId": deployment, "status": "rolling-out", "request": body}, 201


@app.post("/analyze")
async def analyze() -> Any:
    body = await request.get_json(silent=True) or {}
    text = str(body)
    score = 9 if "critical" in text else 3
    return {"riskScore": score, "category": "malware" if score > 7 else "noise", "summary": "demo analysis"}


@app.post("/incidents")
async def incident() -> Any:
    return {"incidentId": "INC-1001", "status": "open"}, 201


@app.post("/phishing/reports/<report>/analyze")
async def analyze_report(report: str) -> Any:
    return {"sender": "billing@examp1e.com", "subject": "Invoice overdue",
            "urls": ["http://examp1e.com/pay", "http://examp1e.com/login"], "attachments": ["invoice.docm"]}


@app.post("/sandbox/submissions")
async def submit() -> Any:
    return {"submissionId": "SB-" + request.headers.get("Idempotency-Key", "x")[-8:]}, 202


@app.get("/intel/url-reputation")
async def reputation() -> Any:
    return {"url": request.args.get("url"), "reputation": "malicious"}


@app.post("/phishing/score")
async def phishing_score() -> Any:
    return {"verdict": "malicious", "confidence": 0.93}


@app.route("/<path:path>", methods=["GET", "POST", "PUT", "PATCH", "DELETE"])
async def anything(path: str) -> Any:
    return {"ok": True, "path": "/" + path}


async def main(port: int) -> None:
    config = Config()
    config.bind = [f"127.0.0.1:{port}"]
    config.accesslog = None
    # keep idle connections longer than clients do (httpx: 5 s), so a client never sends a
    # request on a connection the server is closing at that very moment
    config.keep_alive_timeout = 75
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:  # before serving: no lost signal

        async def stop() -> None:
            async for _ in signals:
                return

        async with trio.open_nursery() as nursery:
            urls = await nursery.start(partial(serve, app, config, shutdown_trigger=stop))  # type: ignore[arg-type]
            print(f"demo services on {urls[0]}", flush=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, default=3001)
    trio.run(main, parser.parse_args().port)
