"""``dispatcher up``: a whole region on this machine, in one command.

Starts (or reuses) the database, migrates it, then runs a listener, an event
monitor, a SEP supervisor, the HTTP front and the status page as child processes,
prints where to connect, and on Ctrl-C or SIGTERM stops them all (SEPs finish their
tasks first) and, if it started the embedded PostgreSQL, stops that too.
"""

from __future__ import annotations

import os
import shlex
import socket
import sys
import time
from typing import Any

import click
import psycopg

from sep.options import SEPConfig, click_options
from sep.options import argv as sep_argv

from ..config import DEFAULT_APP, DEFAULT_HOME, DEFAULT_REGION, Settings, masked_url
from ..database import Backoff, database_url, embedded_running, stop_embedded
from ..errors import DatabaseUnavailable, DispatcherError
from ..gateway import ops
from ..logs import get_logger
from ..migrate import ensure_schema
from ..supervision import NEVER, Child, ProcessSupervisor
from ._app import App, pass_app, say

log = get_logger("dispatcher.up")
# how long up keeps trying to start while its database goes away (an embedded server
# killed as it came up is started again, as while up runs)
STARTUP_DB_PATIENCE_S = 60.0


def _database_gone(exc: BaseException) -> bool:
    """Is EXC the database going away (not a fault of the region or the app)?"""
    if isinstance(exc, DatabaseUnavailable | psycopg.OperationalError):
        return True
    sqlalchemy_exc = sys.modules.get("sqlalchemy.exc")  # (Alembic, migrating)
    return sqlalchemy_exc is not None and isinstance(exc, sqlalchemy_exc.OperationalError)


def _leave_as_found(app: App, settings: Settings, we_started_db: bool) -> None:
    """Leave the machine as up found it: stop the embedded server if this up started it
    (when up stops, or when it could not start); a failure to stop it is a warning,
    never what hides why up stopped."""
    if not we_started_db:
        return
    app.close()
    try:
        stop_embedded(settings)
        log.info("database_stopped", pgdata=str(settings.pgdata))
    except Exception as exc:  # (pg_ctl refused: the server had died, say)
        log.warning("database_not_stopped", error=" ".join(str(exc).split()))


SAMPLE_APP = DEFAULT_APP  # examples/sample.py


def _wait_for_port(
    host: str,
    port: int,
    timeout: float,
    children: ProcessSupervisor,
    watch: EmbeddedWatch | None,
) -> bool:
    """Wait until the listener answers on HOST:PORT. A child that exits meanwhile ends
    the wait (a fault of the region or the app: said at once), unless the embedded
    database was down or restarted since up began: then it is started again like any
    child, and so is the database (up outlives its database killed as it starts)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not children.stopping:
        if watch is not None:
            watch.check()
        for c in children.children:
            if c.proc is not None and c.proc.poll() is not None:
                if watch is not None and not embedded_running(watch.settings):
                    watch.troubled = True  # (its child died of it: not a fault of ours)
                if watch is None or not watch.troubled:
                    return False
        children.check()
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return True
        except OSError:
            time.sleep(0.1)
    return False


@click.command("up")
@click.option(
    "--app",
    "app_module",
    default=None,
    help=f"Module whose @program transactions the SEPs run [env DISPATCHER_UP_APP; file: "
    f"up.app; default: {SAMPLE_APP}].",
)
@click.option(
    "--seps",
    type=click.IntRange(1, 1000),
    default=None,
    help="SEP processes [env DISPATCHER_UP_SEPS; file: up.seps; default: one per core, "
    "at least 2].",
)
@click.option(
    "--host",
    default=None,
    help="Listener address [env DISPATCHER_LISTENER_HOST; file: listener.host; "
    "default: 127.0.0.1].",
)
@click.option(
    "--port",
    type=click.IntRange(1, 65535),
    default=None,
    help="Listener port [env DISPATCHER_LISTENER_PORT; file: listener.port; default: 7300].",
)
@click.option(
    "--metrics-port",
    type=click.IntRange(1, 65535),
    default=None,
    help="Serve Prometheus metrics of the listener here (monitor: +1, SEPs: +2).",
)
@click.option(
    "--http-port",
    type=click.IntRange(1, 65535),
    default=None,
    help="HTTP front port, on the listener's host [env DISPATCHER_HTTP_PORT; file: "
    "http.port; default: 7380].",
)
@click.option(
    "--web-port",
    type=click.IntRange(1, 65535),
    default=None,
    help="Status page port, on web.host (127.0.0.1 unless configured: the page has no "
    "login) [env DISPATCHER_WEB_PORT; file: web.port; default: 7390].",
)
@click.option(
    "--listeners",
    type=click.IntRange(1, 64),
    default=None,
    help="Listener processes sharing the port (SO_REUSEPORT), for more sessions per "
    "second on a machine with more cores [env DISPATCHER_UP_LISTENERS; file: "
    "up.listeners; default: 1].",
)
@click.option("--no-http", is_flag=True, help="Do not run the HTTP front.")
@click.option("--no-web", is_flag=True, help="Do not run the status page.")
@click.option("--no-monitor", is_flag=True, help="Do not run an event monitor.")
@click_options("--batch")
@pass_app
def up(
    app: App,
    app_module: str | None,
    seps: int | None,
    host: str | None,
    port: int | None,
    metrics_port: int | None,
    http_port: int | None,
    web_port: int | None,
    listeners: int | None,
    no_http: bool,
    no_web: bool,
    no_monitor: bool,
    sep_options: dict[str, Any],
) -> None:
    """Start a complete region here: database, listener, event monitor and SEPs.

    An option not given takes its value from the environment, then dispatcher.toml
    (up.app, up.seps, up.batch, listener.host, listener.port): see dispatcher config show.
    """
    settings = app.settings
    # flags > environment > file > defaults (the last three resolved in settings)
    app_module = app_module if app_module is not None else settings.up.app
    seps = seps if seps is not None else settings.up.seps
    host = host if host is not None else settings.listener.host
    port = port if port is not None else settings.listener.port
    http_port = http_port if http_port is not None else settings.http.port
    web_port = web_port if web_port is not None else settings.web.port
    listeners = listeners if listeners is not None else settings.up.listeners
    ctx = click.get_current_context()
    if ctx.get_parameter_source("sep_batch") in (None, click.core.ParameterSource.DEFAULT):
        sep_options = {**sep_options, "batch": settings.up.batch}
    # the status page has no login: on web.host (127.0.0.1 unless configured), not on
    # the listener's --host (which may be every interface)
    web_bind = settings.web.host
    probes: list[tuple[str, str, int, str | None, str]] = [("", "--port", port, None, host)]
    if not no_http:
        probes.append(("the HTTP front ", "--http-port", http_port, "--no-http", host))
    if not no_web:
        probes.append(("the status page ", "--web-port", web_port, "--no-web", web_bind))
    for i, (what, flag, number, off, where) in enumerate(probes):
        same = [other for _, other, n, _, _ in probes[:i] if n == number]
        if same:
            raise click.UsageError(f"{flag} {number} is the port of {same[0]} too")
        with socket.socket() as probe:
            # as the listener binds (SO_REUSEADDR): a TIME-WAIT left by the last run is
            # no reason to refuse
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind((where, number))
            except OSError as exc:
                raise click.UsageError(
                    f"{what}cannot listen on {where}:{number}: {exc.strerror} (is a region "
                    f"already up? choose another {flag}" + (f", or {off})" if off else ")")
                ) from None
    we_started_db = not settings.database_url and not embedded_running(settings)
    from sep.program import AppError, sync_app

    backoff = Backoff(first=0.2, max_delay=2.0)
    deadline = time.monotonic() + STARTUP_DB_PATIENCE_S
    troubled_start = False  # the database went away while up started
    while True:
        try:
            url = app.url
            ensure_schema(url, upgrade_older=True)
            db = app.db(ensure=True)
            try:
                sync_app(db, app_module)  # before the listener accepts its first call
            except AppError as exc:
                raise click.UsageError(str(exc)) from None
            break
        except Exception as exc:
            if settings.database_url or not _database_gone(exc):
                _leave_as_found(app, settings, we_started_db)
                raise
            # the embedded server went away while up started (killed as it came up):
            # started again, as while up runs, for a while
            if time.monotonic() > deadline:
                _leave_as_found(app, settings, we_started_db)
                raise
            delay = backoff.next_delay()
            troubled_start = True
            log.warning(
                "database_unavailable",
                error=" ".join(str(exc).split()),
                retry_in_s=delay,
                during="start",
            )
            app.reset()
            time.sleep(delay)
        except BaseException:
            _leave_as_found(app, settings, we_started_db)
            raise
    count = seps or max(2, os.cpu_count() or 2)
    info = db.run(ops.region.get_region(db.name))
    if info["max_seps"] < count:
        db.run(ops.region.set_region(db.name, max_seps=count))
    env = {
        **os.environ,
        "DISPATCHER_DATABASE_URL": url,
        "DISPATCHER_REGION": settings.region,
        "DISPATCHER_HOME": str(settings.home),
    }
    if settings.config_file is not None:  # the children read the same file
        env["DISPATCHER_CONFIG"] = str(settings.config_file.absolute())
    py = [sys.executable, "-m", "dispatcher"]
    sep_config = SEPConfig(url, settings.region, app=app_module, **sep_options)

    def metrics(offset: int) -> list[str]:
        return [] if metrics_port is None else ["--metrics-port", str(metrics_port + offset)]

    def on_exit(child: Child, returncode: int, _now: float) -> float | None:
        if child.name == "seps" and returncode == 0:
            # the SEP supervisor ends well only when an operator stopped its last SEP
            # (dispatcher sep stop): that decision stands; a crash (any other exit) is
            # restarted with backoff
            log.warning(
                "seps_stopped_by_operator",
                hint=f"start SEPs again with: dispatcher sep start --app {app_module}",
            )
            return NEVER
        return None

    # each child in its own process group (Ctrl-C reaches only up); it ends with up,
    # even on kill -9; restarted after 1 s, 2 s, 4 s ... 30 s
    children = ProcessSupervisor(
        log, first_delay=1.0, max_delay=30.0, new_session=True, on_exit=on_exit
    )
    seps_argv = [*py, "sep", "start", *sep_argv(sep_config), "--count", str(count), *metrics(2)]
    children.add("seps", seps_argv, env)
    listener_argv = [*py, "listener", "--host", host, "--port", str(port)]
    if listeners == 1:
        children.add("listener", [*listener_argv, *metrics(0)], env)
    else:  # on one port; metrics: the first at +0, the others after the SEPs' (+3 ...)
        for i in range(listeners):
            more = metrics(0 if i == 0 else 2 + i)
            children.add(f"listener-{i + 1}", [*listener_argv, "--reuse-port", *more], env)
    if not no_http:
        children.add("http", [*py, "http", "--host", host, "--port", str(http_port)], env)
    if not no_web:
        children.add("web", [*py, "web", "--host", web_bind, "--port", str(web_port)], env)
    root = click.get_current_context().find_root().command
    if not no_monitor and isinstance(root, click.Group) and "monitor" in root.commands:
        children.add("monitor", [*py, "monitor", *metrics(1)], env)

    watch = None if settings.database_url else EmbeddedWatch(app)
    if watch is not None and troubled_start:
        watch.troubled = True
    try:
        with children.stopping_on_signals():
            children.start_all()
            if not _wait_for_port(host, port, 60, children, watch):
                children.stopping = True
                click.echo("error: the region did not come up (see the log above)", err=True)
            else:
                http_line = "" if no_http else f"  http       http://{host}:{http_port}/v1/\n"
                web_host = f"[{web_bind}]" if ":" in web_bind else web_bind
                web_line = "" if no_web else f"  status     http://{web_host}:{web_port}/\n"
                cmd = _same_region_prefix(settings) + "dispatcher"
                say(
                    app,
                    f"\nregion {settings.region!r} is up: {count} SEPs running {app_module}\n"
                    f"  listener   {host}:{port}"
                    + (f" ({listeners} processes)" if listeners > 1 else "")
                    + "\n"
                    f"{http_line}"
                    f"{web_line}"
                    f"  database   {masked_url(url)}\n"
                    f"try, from another terminal:\n"
                    f'  {cmd} call ECHO --data \'{{"hello": "world"}}\''
                    f" --address {host}:{port}\n"
                    f"  {cmd} status\n"
                    f"Ctrl-C stops everything.\n",
                    "region_is_up",
                    region=settings.region,
                    seps=count,
                    app_module=app_module,
                    listener=f"{host}:{port}",
                    listeners=listeners,
                    http=None if no_http else f"http://{host}:{http_port}/v1/",
                    status=None if no_web else f"http://{web_host}:{web_port}/",
                    database=masked_url(url),
                )
            while not children.stopping:
                time.sleep(0.2)
                if watch is not None:
                    watch.check()
                children.check()
    finally:
        _stop_all(children)
        _leave_as_found(app, settings, we_started_db)
        say(app, "region stopped", "region_stopped", region=settings.region)


class EmbeddedWatch:
    """Keeps the embedded PostgreSQL of this home running while ``up`` runs: a server that
    died (kill -9, out of memory) is started again with backoff; the listener, SEPs and
    monitor reconnect by themselves."""

    def __init__(self, app: App, every: float = 1.0) -> None:
        self.settings = app.settings
        self.every = every
        self.next_check = time.monotonic() + every
        self.backoff = Backoff(first=0.5, max_delay=10.0)
        self.down_since: float | None = None
        self.troubled = False  # the server was found down (or restarted) at least once

    def check(self) -> None:
        now = time.monotonic()
        if now < self.next_check:
            return
        self.next_check = now + self.every
        if embedded_running(self.settings):
            return
        self.troubled = True
        if self.down_since is None:
            self.down_since = now
            log.warning("database_down", pgdata=str(self.settings.pgdata))
        try:
            database_url(self.settings)  # starts the server of this home
        except DispatcherError as exc:
            delay = self.backoff.next_delay()
            self.next_check = now + delay
            log.warning("database_restart_failed", error=str(exc), retry_in_s=delay)
            return
        log.warning("database_restarted", down_s=round(time.monotonic() - self.down_since, 1))
        self.down_since = None
        self.backoff.reset()


def _same_region_prefix(settings: Settings) -> str:
    """The environment another terminal needs to reach this region ("" for the
    defaults): without it a command would start its own database in ~/.dispatcher."""
    env: dict[str, str] = {}
    if settings.database_url:  # its password hidden: type it, or export the variable
        env["DISPATCHER_DATABASE_URL"] = masked_url(settings.database_url)
    elif settings.home != DEFAULT_HOME.expanduser():
        env["DISPATCHER_HOME"] = str(settings.home)
    if settings.region != DEFAULT_REGION:
        env["DISPATCHER_REGION"] = settings.region
    if settings.config_file is not None and settings.config_file.parent != settings.home:
        env["DISPATCHER_CONFIG"] = str(settings.config_file.absolute())
    return "".join(f"{k}={shlex.quote(v)} " for k, v in env.items())


def _stop_all(children: ProcessSupervisor, grace: float = 60.0) -> None:
    """SIGTERM every child (listener first, SEPs finish their task), then SIGKILL."""
    first = {"listener": 0, "http": 0, "web": 0, "monitor": 1}
    for c, returncode in children.stop_all(
        grace, order=lambda c: first.get(c.name.split("-")[0], 2)
    ):
        log.info("process_stopped", process=c.name, returncode=returncode)


def register(cli: click.Group) -> None:
    cli.add_command(up)
