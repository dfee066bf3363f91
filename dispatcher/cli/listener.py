"""``dispatcher listener``, ``call``, ``connect`` and ``token``: clients and their sessions."""

from __future__ import annotations

import asyncio
import json
import signal
import ssl
import sys
from typing import Any

import click

from .. import eventloop
from ..gateway import ops
from ..protocol import DEFAULT_PORT
from ..seconds import Seconds
from ..tokens import create_token, local_token
from ._app import App, echo_json, json_text, pass_app, say, values_are_usage_errors
from ._data import DATA_HELP, read_data

DEFAULT_ADDRESS = f"127.0.0.1:{DEFAULT_PORT}"
ADDRESS_HELP = "HOST:PORT [default: the listener's port from the settings, on this machine]"


def _address(app: App, address: str | None) -> str:
    """ADDRESS, else the configured listener's (a listener on every interface is
    reached on this machine's loopback)."""
    if address is not None:
        return address
    host = app.settings.listener.host
    if host in ("", "0.0.0.0", "::"):
        host = "127.0.0.1"
    return f"{host}:{app.settings.listener.port}"


@click.command("listener")
@click.option(
    "--host",
    default=None,
    help="[env DISPATCHER_LISTENER_HOST; file: listener.host; default: 127.0.0.1]",
)
@click.option(
    "--port",
    type=click.IntRange(0, 65535),
    default=None,
    help=f"0: any free port [env DISPATCHER_LISTENER_PORT; file: listener.port; "
    f"default: {DEFAULT_PORT}].",
)
@click.option("--tls-cert", type=click.Path(exists=True, dir_okay=False), help="PEM certificate.")
@click.option("--tls-key", type=click.Path(exists=True, dir_okay=False), help="PEM private key.")
@click.option(
    "--metrics-port",
    type=click.IntRange(1, 65535),
    default=None,
    help="Serve Prometheus metrics of the region here.",
)
@click.option(
    "--channel-host",
    default=None,
    help="Serve the internal SEP channel on TCP at this host (for SEPs on other "
    "machines) [default: a unix socket].",
)
@click.option(
    "--reuse-port",
    is_flag=True,
    help="Share the port with other listeners of this machine started so (SO_REUSEPORT): "
    "the system spreads new sessions among them.",
)
@click.option(
    "--heartbeat",
    type=Seconds(0.05, 3600),
    default=2.0,
    show_default=True,
    help="Seconds between heartbeats (and reaps of dead listeners every 5th beat).",
)
@click.option(
    "--dead-after",
    type=Seconds(0.5, 86400),
    default=10.0,
    show_default=True,
    help="A listener silent this long is dead: its sessions are ended.",
)
@click.option(
    "--max-sessions",
    type=click.IntRange(1, 1_000_000),
    default=None,
    help="Sessions this listener serves at once; a hello past it is refused "
    "(too_many_sessions) [env DISPATCHER_LISTENER_MAX_SESSIONS; file: listener.max_sessions; "
    "default: no limit].",
)
@pass_app
def listener(
    app: App,
    host: str | None,
    port: int | None,
    tls_cert: str | None,
    tls_key: str | None,
    metrics_port: int | None,
    channel_host: str | None,
    reuse_port: bool,
    heartbeat: float,
    dead_after: float,
    max_sessions: int | None,
) -> None:
    """Serve client sessions on HOST:PORT until Ctrl-C or SIGTERM."""
    from listener.health import ListenerStopped
    from listener.server import Listener

    # flags > environment > file > defaults (the last three resolved in settings)
    host = host if host is not None else app.settings.listener.host
    port = port if port is not None else app.settings.listener.port
    if max_sessions is None:
        max_sessions = app.settings.listener.max_sessions
    if dead_after <= heartbeat * 2:
        raise click.UsageError("--dead-after must be more than twice --heartbeat")
    if bool(tls_cert) != bool(tls_key):
        raise click.UsageError("--tls-cert and --tls-key go together")
    tls = None
    if tls_cert and tls_key:
        tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        tls.load_cert_chain(tls_cert, tls_key)
    app.db(ensure=True)
    url = app.process_url("listener")
    app.close()
    if metrics_port is not None:
        from ..metrics import serve_metrics

        serve_metrics(metrics_port, url, app.settings.region)

    async def main() -> None:
        server = Listener(
            url,
            app.settings.region,
            host,
            port,
            tls=tls,
            channel_host=channel_host,
            reuse_port=reuse_port,
            heartbeat_interval=heartbeat,
            dead_after=dead_after,
            max_sessions=max_sessions,
        )
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, server.stopping.set)
        try:
            await server.start()
        except ListenerStopped:  # SIGTERM while its database was away: nothing served
            await server.close()
            return
        say(app, f"listening on {host}:{server.port}", "listening", host=host, port=server.port)
        await server.stopping.wait()
        await server.close()

    eventloop.run(main())


def _token(app: App, token: str | None) -> str:
    return token or local_token(app.db(), app.settings.home)


@click.command("call")
@click.argument("transid")
@click.option("--data", default="null", help=DATA_HELP)
@click.option("--address", default=None, help=ADDRESS_HELP)
@click.option("--token", envvar="DISPATCHER_TOKEN", help="[env DISPATCHER_TOKEN; default: local]")
@click.option("--tls", is_flag=True, help="Connect with TLS.")
@click.option("--cafile", type=click.Path(exists=True, dir_okay=False))
@click.option(
    "--timeout",
    type=Seconds(0, 7 * 86400, low_open=True),
    default=300.0,
    show_default=True,
    help="Seconds to wait for each reply.",
)
@click.option(
    "--key",
    default=None,
    help="Idempotency key: a call repeated with the same key runs once and gets the "
    "first call's outcome.",
)
@click.option(
    "--routing-key",
    default=None,
    help="Calls with the same routing key run on the same live SEP (docs/protocol.md).",
)
@click.option(
    "--json",
    "as_json",
    is_flag=True,
    help='Print {"request_id": N, "result": ...} instead of the result alone.',
)
@pass_app
def call(
    app: App,
    transid: str,
    data: str,
    address: str | None,
    token: str | None,
    tls: bool,
    cafile: str | None,
    timeout: float,
    key: str | None,
    routing_key: str | None,
    as_json: bool,
) -> None:
    """Call TRANSID through a listener and print its result as JSON (--json: with its
    request id; exit 1 on an error reply, whose JSON on stderr has the id too). Output
    a conversational program sends is printed to stderr; when it asks for input, a line
    is read from standard input (as JSON, else as a string)."""
    from listener.client import CallError, connect

    payload = read_data(data)
    address = _address(app, address)

    def on_output(value: Any, wants_input: bool) -> Any:
        if value is not None:
            click.echo(json_text(value), err=True)
        if wants_input:
            line = sys.stdin.readline()
            if not line:  # end of input: nothing to answer with (the session ends)
                raise click.ClickException(
                    "the program asks for input and standard input is at its end"
                )
            return _parse_line(line)
        return None

    session = None
    # the hello: the listener answers it within 10 s even when its database hangs (5 s
    # for a connection, 5 s for the token's statement)
    hello_within = min(timeout, 15.0)
    try:
        with connect(
            address, _token(app, token), tls=tls, cafile=cafile, timeout=hello_within
        ) as session:
            result = session.call(
                transid,
                payload,
                on_output=on_output,
                timeout=timeout,
                key=key,
                routing_key=routing_key,
            )
    except CallError as exc:
        click.echo(
            json_text(
                {
                    "error": exc.code,
                    "message": exc.message,
                    "retryable": exc.retryable,
                    "request_id": exc.request_id,
                    "detail": exc.detail,
                }
            ),
            err=True,
        )
        raise SystemExit(1) from None
    except TimeoutError:
        rid = None if session is None else session.request_id
        if rid is None:
            click.echo(
                f"error: no answer from the listener at {address} to the hello in "
                f"{hello_within:g} s",
                err=True,
            )
        else:
            click.echo(
                f"error: request {rid} did not finish in {timeout:g} s (--timeout); it may "
                f"still run: dispatcher request show {rid}",
                err=True,
            )
        raise SystemExit(1) from None
    except OSError as exc:
        rid = None if session is None else session.request_id
        if rid is None:
            click.echo(f"error: cannot reach the listener at {address}: {exc}", err=True)
        else:
            click.echo(
                f"error: the listener at {address} went away after accepting request {rid}: "
                f"{exc}; its outcome: dispatcher request show {rid}",
                err=True,
            )
        raise SystemExit(1) from None
    if as_json:
        click.echo(json_text({"request_id": session.request_id, "result": result}))
    else:
        click.echo(json_text(result))


def _parse_line(line: str) -> Any:
    text = line.strip()
    try:
        return json.loads(text)
    except (ValueError, RecursionError):  # not JSON (or too deep): the line as a string
        return text


@click.command("connect")
@click.option("--address", default=None, help=ADDRESS_HELP)
@click.option("--token", envvar="DISPATCHER_TOKEN")
@click.option("--tls", is_flag=True)
@click.option("--cafile", type=click.Path(exists=True, dir_okay=False))
@pass_app
def connect_(
    app: App, address: str | None, token: str | None, tls: bool, cafile: str | None
) -> None:
    """An interactive session: type `TRANSID [JSON]`, see outputs, answer prompts.
    After a task ends with RETURN TRANSID, a line without a TRANSID is its input."""
    from listener.client import CallError, connect

    def on_output(value: Any, wants_input: bool) -> Any:
        if value is not None:
            click.echo(f"< {json_text(value)}")
        if wants_input:
            return _parse_line(click.prompt("?", prompt_suffix=" ", default="", show_default=False))
        return None

    with connect(_address(app, address), _token(app, token), tls=tls, cafile=cafile) as session:
        click.echo(f"session {session.session_id}; type TRANSID [JSON], or quit")
        while True:
            try:
                line = input(
                    "> " if not session.next_transid else f"({session.next_transid})> "
                ).strip()
            except EOFError:
                return
            if line in ("quit", "exit"):
                return
            if not line:
                continue
            head, _, rest = line.partition(" ")
            try:
                if session.next_transid and not head.isupper():
                    result = session.input(_parse_line(line), on_output=on_output)
                else:
                    data = _parse_line(rest) if rest else None
                    result = session.call(head, data, on_output=on_output)
                click.echo(json_text(result))
            except CallError as exc:
                click.echo(f"error {exc.code}: {exc.message}")


@click.group("token")
def token() -> None:
    """Client tokens (stored hashed)."""


@token.command("create")
@click.argument("name")
@click.option(
    "--allow", multiple=True, help="A transaction the token may run (repeatable); default: all."
)
@click.option(
    "--priority", type=click.IntRange(0, 255), default=0, help="Session priority of its sessions."
)
@click.option(
    "--max-sessions",
    type=click.IntRange(1, 1_000_000),
    default=None,
    help="Sessions it may have open at once in the region, all listeners together; a hello "
    "past it is refused (too_many_sessions) [default: no limit].",
)
@pass_app
@values_are_usage_errors
def token_create(
    app: App, name: str, allow: tuple[str, ...], priority: int, max_sessions: int | None
) -> None:
    """Create (or replace) token NAME and print it (it is shown only once)."""
    click.echo(create_token(app.db(), name, allow or None, priority, max_sessions))


@token.command("list")
@click.option("--json", "as_json", is_flag=True)
@pass_app
def token_list(app: App, as_json: bool) -> None:
    """List tokens (names and rights, never the tokens)."""
    db = app.db()
    rows = db.run(ops.listener.list_tokens(db.name))
    if as_json:
        echo_json(rows)
        return
    for r in rows:
        click.echo(
            f"{r['name']:20} priority {r['priority']:>3}  allow "
            f"{', '.join(r['allow']) if r['allow'] else 'all'}"
            + (f"  max sessions {r['max_sessions']}" if r["max_sessions"] else "")
        )


@token.command("revoke")
@click.argument("name")
@pass_app
def token_revoke(app: App, name: str) -> None:
    """Revoke token NAME: no new session may use it (sessions already open go on until
    they end; to end them too, restart the listeners)."""
    db = app.db()
    if not db.run(ops.listener.revoke_token(db.name, name)):
        raise click.ClickException(f"no token {name!r} in region {db.name!r} (see: token list)")
    click.echo(f"token {name!r} revoked")


def register(cli: click.Group) -> None:
    cli.add_command(listener)
    cli.add_command(call)
    connect_.name = "connect"
    cli.add_command(connect_)
    cli.add_command(token)
