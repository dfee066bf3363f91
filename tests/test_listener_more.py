"""The listener under TLS, and a listener that dies: acknowledged work survives."""

from __future__ import annotations

import os
import signal
import ssl
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from dispatcher.region import Region
from dispatcher.tokens import create_token
from listener import connect
from sep.program import sync_app

from .listeners import free_port, running_listener, wait_port
from .seps import ROOT, running_seps, sep_env, wait_final

APP = "dispatcher_examples.sample"


def _cert(tmp: Path) -> tuple[Path, Path]:
    key, cert = tmp / "key.pem", tmp / "cert.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            str(key),
            "-out",
            str(cert),
            "-days",
            "1",
            "-subj",
            "/CN=localhost",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
        ],
        check=True,
        capture_output=True,
    )
    return cert, key


@pytest.mark.skipif(
    not any(os.access(os.path.join(p, "openssl"), os.X_OK) for p in os.environ["PATH"].split(":")),
    reason="openssl not installed",
)
def test_tls_sessions(region: Region, db_url: str, tmp_path: Path) -> None:
    """With --tls-cert/--tls-key, clients connect over TLS; plain TCP gets nowhere."""
    cert, key = _cert(tmp_path)
    sync_app(region, APP)
    token = create_token(region, "tls")
    with (
        running_seps(db_url, "test", 1, app=APP),
        running_listener(db_url, "test", "--tls-cert", str(cert), "--tls-key", str(key)) as address,
    ):
        ctx = ssl.create_default_context(cafile=str(cert))
        with connect(address, token, tls=ctx) as s:
            assert s.call("ECHO", "secret") == "secret"
        with pytest.raises((ConnectionError, OSError)):
            connect(address, token, timeout=3)


def test_listener_killed_acknowledged_request_survives(
    region: Region, db_url: str, conn: Any
) -> None:
    """kill -9 the listener after `accepted`: the request still runs, its result is
    retrievable from another listener, and the dead listener's sessions are ended."""
    sync_app(region, APP)
    token = create_token(region, "t")
    port = free_port()
    doomed = subprocess.Popen(
        [sys.executable, "-m", "dispatcher", "listener", "--port", str(port)],
        env=sep_env(db_url, "test"),
        cwd=ROOT,
    )
    with running_seps(db_url, "test", 1, app=APP):
        wait_port(port, doomed)
        s = connect(f"127.0.0.1:{port}", token)
        s.send({"type": "call", "id": 1, "transid": "SLOW", "data": {"seconds": 1}})
        accepted = s.receive(timeout=10)
        assert accepted["type"] == "accepted"
        os.kill(doomed.pid, signal.SIGKILL)
        doomed.wait()
        request_id = accepted["request_id"]
        assert wait_final(region, request_id, timeout=30)["result"] == {"slept": 1.0}
        conn.execute("UPDATE dispatcher.listener SET heartbeat_at = now() - interval '1 hour'")
        # beating fast, it reaps (every 5th beat) within a second or so
        with running_listener(db_url, "test", "--heartbeat", "0.2", "--dead-after", "2") as other:
            with connect(other, token) as s2:
                assert s2.result_of(request_id)["data"] == {"slept": 1.0}
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                left = conn.execute(
                    "SELECT count(*) AS n FROM dispatcher.listener WHERE pid = %s", [doomed.pid]
                ).fetchone()
                if left["n"] == 0:
                    break
                time.sleep(0.2)
            assert left["n"] == 0, "the dead listener was not reaped"
            sessions = conn.execute(
                "SELECT count(*) AS n FROM dispatcher.session WHERE listener_id IS NULL "
                "OR listener_id NOT IN (SELECT id FROM dispatcher.listener)"
            ).fetchone()
            assert sessions["n"] == 0


def test_sep_dying_in_a_conversation(region: Region, db_url: str) -> None:
    """The SEP of a conversation dies: the client gets a sep_lost error reply, the
    request is not run again from its start, and the session goes on."""
    sync_app(region, APP)
    region.set(sep_dead_after_s=1.0)
    token = create_token(region, "t")
    with (
        running_seps(db_url, "test", 1, app=APP) as procs,
        running_listener(db_url, "test") as address,
    ):
        with connect(address, token) as s:
            s.send({"type": "call", "id": 1, "transid": "CHAT", "data": None})
            assert s.receive(timeout=10)["type"] == "accepted"
            out = s.receive(timeout=10)
            assert out["type"] == "output" and out["wants_input"]
            os.kill(procs[0].pid, signal.SIGKILL)
            procs[0].wait()
            with running_seps(db_url, "test", 1, "--heartbeat", "0.2", app=APP):
                reply = s.receive(timeout=30)
                assert reply["type"] == "error" and reply["code"] == "sep_lost", reply
                assert reply["retryable"] is False
                assert s.call("ECHO", "goes on") == "goes on"
                s.send({"type": "result_of", "id": 2, "request_id": out["request_id"]})
                again = s.receive(timeout=10)
                assert again["code"] == "sep_lost" and again["retryable"] is False, again
                row = region.request(out["request_id"])
                assert row["state"] == "failed" and row["attempt"] == 1
