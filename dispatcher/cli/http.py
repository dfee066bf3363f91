"""``dispatcher http``: the HTTP front of a region (docs/http.md)."""

from __future__ import annotations

import asyncio
import signal

import click

from .. import eventloop
from ._app import App, pass_app, say

DEFAULT_HTTP_PORT = 7380  # listener.http.DEFAULT_HTTP_PORT


@click.command("http")
@click.option(
    "--host", default=None, help="[env DISPATCHER_HTTP_HOST; file: http.host; default: 127.0.0.1]"
)
@click.option(
    "--port",
    type=click.IntRange(0, 65535),
    default=None,
    help=f"0: any free port [env DISPATCHER_HTTP_PORT; file: http.port; "
    f"default: {DEFAULT_HTTP_PORT}].",
)
@pass_app
def http(app: App, host: str | None, port: int | None) -> None:
    """Serve the region's requests and timers over HTTP on HOST:PORT until Ctrl-C or
    SIGTERM (tokens: dispatcher token create)."""
    from listener.http import HttpFront

    host = host if host is not None else app.settings.http.host
    port = port if port is not None else app.settings.http.port

    app.db(ensure=True)
    url = app.process_url("http")
    app.close()
    xr_url = app.settings.cross_region_url
    if xr_url:
        from ..migrate import install_cross_region

        install_cross_region(xr_url)

    async def main() -> None:
        front = HttpFront(url, app.settings.region, host, port, xr_url=xr_url)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, front.stopping.set)
        await front.start()
        say(app, f"http on {host}:{front.port}", "http_serving", host=host, port=front.port)
        try:
            await front.stopping.wait()
        finally:
            await front.close()

    eventloop.run(main())


def register(cli: click.Group) -> None:
    cli.add_command(http)
