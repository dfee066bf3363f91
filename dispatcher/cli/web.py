"""``dispatcher web``: the read-only status page of a region (docs/operations.md)."""

from __future__ import annotations

import asyncio
import signal

import click

from .. import eventloop
from ._app import App, pass_app, say

DEFAULT_WEB_PORT = 7390  # dispatcher.status_page.DEFAULT_WEB_PORT


@click.command("web")
@click.option(
    "--host", default=None, help="[env DISPATCHER_WEB_HOST; file: web.host; default: 127.0.0.1]"
)
@click.option(
    "--port",
    type=click.IntRange(0, 65535),
    default=None,
    help=f"0: any free port [env DISPATCHER_WEB_PORT; file: web.port; "
    f"default: {DEFAULT_WEB_PORT}].",
)
@pass_app
def web(app: App, host: str | None, port: int | None) -> None:
    """Serve the region's status page (read-only, no authentication) on HOST:PORT until
    Ctrl-C or SIGTERM: SEPs, queue depth by priority band over time, recent failures,
    timers. Bind it to 127.0.0.1, or put it behind a proxy."""
    from ..status_page import StatusPage

    host = host if host is not None else app.settings.web.host
    port = port if port is not None else app.settings.web.port

    app.db()  # the schema at head and the region known (else a clear error)
    url = app.process_url("web")  # the role dispatcher_viewer: it reads only
    app.close()
    xr_url = app.settings.cross_region_url

    async def main() -> None:
        page = StatusPage(url, app.settings.region, host, port, xr_url=xr_url)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, page.stopping.set)
        await page.start()  # (a port it cannot have: "cannot listen on HOST:PORT ...")
        shown = f"[{host}]" if ":" in host else host or "every interface"
        say(app, f"web on {shown}:{page.port}", "web_serving", host=host, port=page.port)
        try:
            await page.stopping.wait()
        finally:
            await page.close()

    eventloop.run(main())


def register(cli: click.Group) -> None:
    cli.add_command(web)
