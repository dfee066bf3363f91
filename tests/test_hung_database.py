"""A database that hangs (a stopped server, packets dropped: connections stay open and
nothing answers) is answered database_unavailable within seconds, by the listener and
by the HTTP front, never after as long as it hangs; when it answers again, so do they
(docs/listener.md, "Reliability"; docs/http.md)."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from dispatcher.region import Region
from dispatcher.tokens import create_token
from sep.program import sync_app

from .dbproxy import Proxy, through
from .http_front import http, running_front
from .listeners import listener_process
from .wire import Wire

APP = "dispatcher_examples.sample"
HANG = 120.0  # held back far longer than any answer may take


@pytest.fixture
def proxy(region: Region, db_url: str) -> Iterator[Proxy]:
    sync_app(region, APP)
    p = Proxy(db_url)
    p.start()
    yield p
    p.delay = 0.0
    p.stop()


def test_the_http_front_answers_503_while_the_database_hangs(
    region: Region, db_url: str, proxy: Proxy
) -> None:
    """Each request gets 503 database_unavailable within a few seconds while the
    database hangs (it waited as long as the database did), and 202 once it answers."""
    token = create_token(region, "tester")
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    with running_front(through(proxy, db_url), "test", db_timeout=1.0) as front:
        base = f"http://127.0.0.1:{front.port}"
        assert http("POST", base + "/v1/requests/ECHO", b"1", headers).status == 202
        proxy.delay = HANG
        for path, method, body in [
            ("/v1/requests/ECHO", "POST", b"2"),
            ("/v1/requests/1", "GET", None),
            ("/v1/requests/ECHO", "POST", b"3"),
        ]:
            started = time.monotonic()
            r = http(method, base + path, body, {**headers, "Prefer": "wait=5"})
            assert r.status == 503 and r.body["code"] == "database_unavailable", r.body
            assert time.monotonic() - started < 5, "it waited for the database"
        proxy.delay = 0.0
        deadline = time.monotonic() + 30
        while (r := http("POST", base + "/v1/requests/ECHO", b"4", headers)).status != 202:
            assert time.monotonic() < deadline, r.body
            time.sleep(0.2)


def test_the_listener_answers_database_unavailable_while_the_database_hangs(
    region: Region, db_url: str, proxy: Proxy
) -> None:
    """A call and a hello get database_unavailable within seconds while the database
    hangs (a hello waited as long as it did), and are served once it answers."""
    token = create_token(region, "tester")
    with listener_process(through(proxy, db_url), "test") as (address, _):
        wire = Wire(address, timeout=30)
        assert wire.hello(token)["type"] == "welcome"
        proxy.delay = HANG
        started = time.monotonic()
        wire.send({"type": "call", "id": 1, "transid": "ECHO", "data": "x"})
        reply = wire.read()
        assert reply["type"] == "error" and reply["code"] == "database_unavailable", reply
        assert time.monotonic() - started < 12
        started = time.monotonic()
        other = Wire(address, timeout=30)
        reply = other.hello(token)
        assert reply["type"] == "error" and reply["code"] == "database_unavailable", reply
        assert time.monotonic() - started < 12
        proxy.delay = 0.0
        deadline = time.monotonic() + 30
        while True:
            again = Wire(address, timeout=30)
            if again.hello(token)["type"] == "welcome":
                break
            assert time.monotonic() < deadline
            time.sleep(0.5)


def test_the_http_front_serves_at_once_after_the_database_restarted(
    region: Region, db_url: str, proxy: Proxy
) -> None:
    """Every connection to the database cut and the database back at once (a restart):
    the next request is served (202), not answered 503 for a broken pooled connection."""
    token = create_token(region, "tester")
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    with running_front(through(proxy, db_url), "test", db_timeout=5.0) as front:
        base = f"http://127.0.0.1:{front.port}"
        for n in range(2):
            assert http("POST", base + "/v1/requests/ECHO", b"1", headers).status == 202
            proxy.stop()
            proxy.start()
            time.sleep(0.2)
            r = http("POST", base + "/v1/requests/ECHO", str(n).encode(), headers)
            assert r.status == 202, (n, r.body)
