"""PostgreSQL restarting under a listener: clear retryable errors meanwhile, then
service again without restarting the listener; an acknowledged call survives."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from dispatcher.database import connect as db_connect
from dispatcher.region import Region
from dispatcher.tokens import create_token
from listener import CallError, connect

from .fake_sep import FakeSEP, define_transactions, inprocess_listener
from .plugin import _pg_ctl
from .test_restart import own_server

__all__ = ["own_server"]


def _start(pgdata: Path) -> None:
    _pg_ctl(pgdata, "-w", "-l", str(pgdata / "log"), "-o", "-h ''", "-o", f"-k {pgdata}", "start")


@pytest.mark.slow
def test_listener_rides_out_a_postgres_restart(own_server: tuple[str, Path]) -> None:
    url, pgdata = own_server
    with db_connect(url) as conn:
        region = Region(conn, "r")
        region.ensure()
        define_transactions(region)
        token = create_token(region, "t")
    sep = FakeSEP(url, "r")
    try:
        with inprocess_listener(url, "r", heartbeat_interval=0.2) as lst:
            address = f"127.0.0.1:{lst.port}"
            session = connect(address, token)
            assert session.call("ECHO", "before") == "before"
            # a call acknowledged before the crash
            session.send({"type": "call", "id": "held", "transid": "SLOW", "data": "kept"})
            accepted = session.receive(timeout=10)
            assert accepted["type"] == "accepted"

            other = connect(address, token)
            _pg_ctl(pgdata, "-w", "-m", "immediate", "stop")
            t0 = time.monotonic()
            with pytest.raises(CallError) as err:
                other.call("ECHO", "during", timeout=15)
            assert err.value.code == "database_unavailable" and err.value.retryable
            assert time.monotonic() - t0 < 7
            t1 = time.monotonic()
            with pytest.raises(CallError) as err:
                other.call("ECHO", "during", timeout=15)
            assert err.value.code == "database_unavailable"
            assert time.monotonic() - t1 < 1.0, "known outage: answered at once"
            with pytest.raises(CallError) as err:
                connect(address, token)
            assert err.value.code == "database_unavailable"

            _start(pgdata)
            sep.hold.set()  # the held task completes after the restart
            deadline = time.monotonic() + 30
            while True:
                try:
                    assert other.call("ECHO", "after", timeout=15) == "after"
                    break
                except CallError as exc:
                    assert exc.code == "database_unavailable" and time.monotonic() < deadline
                    time.sleep(0.2)
            reply = session.receive(timeout=30)
            assert reply == {
                "type": "result",
                "id": "held",
                "request_id": accepted["request_id"],
                "data": "kept",
            }
            with connect(address, token) as fresh:
                assert fresh.call("ECHO", "new session") == "new session"
            other.close()
            session.close()
    finally:
        sep.kill()
