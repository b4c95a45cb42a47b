"""What ``make run`` runs: ``runbooks serve`` with the demo services beside it.

    python examples/serve_with_demo.py [runbooks serve options...]

Unless ``CALL_SERVICE_BASE_URL`` is set, it first starts ``examples/demo_services.py`` on a
free port of 127.0.0.1 (so several instances, e.g. ``PORT=3100 make run`` beside another
one, never share or fight over a port) and points ``CALL_SERVICE_BASE_URL`` of the gateway
at it. On SIGINT or SIGTERM it stops the gateway (gracefully: in-flight requests finish,
the runtime closes) and then the demo services, and exits with the gateway's status. Both
children run in process groups of their own, so a Ctrl-C at the terminal reaches only this
launcher, which stops them in order. If the gateway exits by itself (a bad configuration,
a port in use), the demo services are stopped too.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import trio

HERE = Path(__file__).resolve().parent
STOP_WITHIN_S = 20.0


async def main(serve_args: list[str]) -> int:
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        env = dict(os.environ)
        demo = None
        try:
            if not env.get("CALL_SERVICE_BASE_URL"):
                demo, url = await _start_demo()
                env["CALL_SERVICE_BASE_URL"] = url
                print(f"make run: demo services on {url} (pid {demo.pid})", file=sys.stderr, flush=True)
            gateway = await trio.lowlevel.open_process(
                [sys.executable, "-m", "gateway", "serve", *serve_args], env=env, process_group=0)
            print(f"make run: gateway pid {gateway.pid}", file=sys.stderr, flush=True)
            return await _until_done(gateway, signals)
        finally:
            if demo is not None:
                await _stop(demo)


async def _start_demo() -> tuple[trio.Process, str]:
    demo = await trio.lowlevel.open_process(
        [sys.executable, str(HERE / "demo_services.py"), "--port", "0"], stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL, process_group=0)
    assert demo.stdout is not None
    line = b""
    with trio.fail_after(30):
        while not line.endswith(b"\n"):
            chunk = await demo.stdout.receive_some(1)
            if not chunk:
                raise SystemExit("make run: the demo services did not start")
            line += chunk
    return demo, line.decode().split(" on ", 1)[1].strip()


async def _until_done(gateway: trio.Process, signals: trio.abc.ReceiveChannel[int] | object) -> int:
    """The gateway's exit status: when it exits by itself, or after a signal stopped it."""
    async with trio.open_nursery() as watchers:

        async def on_signal() -> None:
            async for signum in signals:  # type: ignore[attr-defined]
                print(f"make run: {signal.Signals(signum).name}: stopping", file=sys.stderr, flush=True)
                gateway.send_signal(signal.SIGTERM)
                return

        watchers.start_soon(on_signal)
        status = await gateway.wait()
        watchers.cancel_scope.cancel()
    return status


async def _stop(process: trio.Process) -> None:
    if process.returncode is None:
        process.send_signal(signal.SIGTERM)
    with trio.move_on_after(STOP_WITHIN_S) as waited:
        await process.wait()
    if waited.cancelled_caught:
        process.kill()
        await process.wait()


if __name__ == "__main__":
    sys.exit(trio.run(main, sys.argv[1:]))
