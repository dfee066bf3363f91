"""The HTTP front (listener/http.py, docs/http.md) on a real port, with a real HTTP
client (urllib), the test database and, where a result is needed, real SEP processes
of the sample app."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import psycopg
import pytest

from dispatcher.region import Region
from dispatcher.tokens import create_token
from listener.http import HttpFront
from listener.http_openapi import openapi
from sep.program import sync_app

from .dbproxy import Proxy, through
from .http_front import Reply, http, running_front
from .seps import running_seps

APP = "dispatcher_examples.sample"


@dataclass
class Front:
    base: str
    token: str
    region: Region
    server: HttpFront

    def call(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        raw: bytes | None = None,
        token: str | None = "",
        content_type: str | None = "application/json",
        headers: dict[str, str] | None = None,
    ) -> Reply:
        """METHOD PATH with BODY as JSON (or the bytes RAW), with this front's token
        (TOKEN None: none)."""
        h = dict(headers or {})
        tok = self.token if token == "" else token
        if tok is not None:
            h["Authorization"] = f"Bearer {tok}"
        data = raw if raw is not None else None if body is None else json.dumps(body).encode()
        if data is not None and content_type is not None:
            h["Content-Type"] = content_type
        return http(method, self.base + path, data, h)


def stored(region: Region) -> int:
    """How many requests the region has, queued or finished."""
    row = region.conn.execute(
        "SELECT (SELECT count(*) FROM dispatcher.request)"
        " + (SELECT count(*) FROM dispatcher.request_history) AS n"
    ).fetchone()
    assert row is not None
    return int(row["n"])


@pytest.fixture
def front(region: Region, db_url: str) -> Iterator[Front]:
    """The HTTP front of region 'test' (the sample app defined, no SEP running)."""
    sync_app(region, APP)
    token = create_token(region, "tester")
    with running_front(db_url, "test", db_timeout=2.0) as server:
        yield Front(f"http://127.0.0.1:{server.port}", token, region, server)


@pytest.fixture
def live(front: Front, db_url: str) -> Iterator[Front]:
    """The HTTP front with two SEPs of the sample app."""
    with running_seps(db_url, "test", 2, app=APP):
        yield front


def problem(r: Reply, status: int, code: str) -> None:
    assert r.status == status, (r.status, r.body)
    assert r.headers["Content-Type"].startswith("application/problem+json")
    assert r.body["code"] == code and r.body["status"] == status, r.body
    assert r.body["type"].endswith(code) and r.body["title"] and r.body["detail"]


def wait_state(f: Front, rid: int, states: tuple[str, ...], timeout: float = 30) -> Reply:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        r = f.call("GET", f"/v1/requests/{rid}")
        if r.body["state"] in states:
            return r
        time.sleep(0.05)
    raise AssertionError(f"request {rid} not in {states}: {r.body}")


def test_accepted_location_and_get(live: Front) -> None:
    """202 with the request id and a Location; GET there shows it done, with timings."""
    r = live.call("POST", "/v1/requests/ECHO", {"x": 1})
    assert r.status == 202, r.body
    rid = r.body["request_id"]
    assert r.headers["Location"] == f"/v1/requests/{rid}"
    assert r.body["state"] in ("queued", "dispatched")
    got = wait_state(live, rid, ("done",))
    assert got.body["result"] == {"x": 1} and got.body["transid"] == "ECHO"
    assert got.body["attempt"] == 1 and got.body["origin"] == "http"
    timings = got.body["timings"]
    for k in ("enqueued", "dispatched", "started", "finished"):
        assert timings[k] and "T" in timings[k], timings
    assert live.region.request(rid)["origin"] == "http"


def test_prefer_wait_answers_the_result(live: Front) -> None:
    """Prefer: wait=5 answers 200 with the result (Preference-Applied); ?wait= too; an
    abend is a problem with the protocol's failure code."""
    r = live.call("POST", "/v1/requests/ECHO", [1, 2], headers={"Prefer": "wait=5"})
    assert r.status == 200, r.body
    assert r.body["state"] == "done" and r.body["result"] == [1, 2]
    assert r.headers["Preference-Applied"] == "wait=5"
    assert r.headers["Location"] == f"/v1/requests/{r.body['request_id']}"
    r = live.call("POST", "/v1/requests/ECHO?wait=5", "hi")
    assert r.status == 200 and r.body["result"] == "hi"
    assert "Preference-Applied" not in r.headers
    r = live.call("POST", "/v1/requests/ABEND", 1, headers={"Prefer": "respond-async, wait=5"})
    problem(r, 500, "abend")
    assert r.body["error"]["type"] == "ValueError" and r.body["state"] == "failed"


def test_wait_that_runs_out_answers_202(live: Front) -> None:
    """A request that does not finish within the wait: 202, as without a wait."""
    t0 = time.monotonic()
    r = live.call("POST", "/v1/requests/SLOW", {"seconds": 3}, headers={"Prefer": "wait=1"})
    assert r.status == 202 and 0.9 < time.monotonic() - t0 < 2.5, r.body
    assert r.headers["Preference-Applied"] == "wait=1"
    assert wait_state(live, r.body["request_id"], ("done",)).body["result"] == {"slept": 3.0}


def test_idempotency_key(live: Front) -> None:
    """The same Idempotency-Key answers the first request (duplicate); the key is
    scoped by the token's name."""
    key = {"Idempotency-Key": "order-17"}
    first = live.call("POST", "/v1/requests/ECHO", {"n": 1}, headers=key)
    assert first.status == 202 and "duplicate" not in first.body
    rid = first.body["request_id"]
    again = live.call("POST", "/v1/requests/ECHO", {"n": 2}, headers=key)
    assert again.status == 202 and again.body["request_id"] == rid
    assert again.body["duplicate"] is True
    waited = live.call("POST", "/v1/requests/ECHO", {"n": 3}, headers={**key, "Prefer": "wait=5"})
    assert waited.status == 200 and waited.body["request_id"] == rid
    assert waited.body["result"] == {"n": 1} and waited.body["duplicate"] is True
    other = create_token(live.region, "other")
    mine = live.call("POST", "/v1/requests/ECHO", {"n": 4}, token=other, headers=key)
    assert mine.status == 202 and mine.body["request_id"] != rid
    assert stored(live.region) == 2


def test_delete_a_queued_request(front: Front) -> None:
    """DELETE cancels a queued request (the region is stopping: it stays queued); then
    it is finished (409); an unknown request is 404."""
    front.region.set(state="stopping")
    r = front.call("POST", "/v1/requests/ECHO", {"x": 1})
    assert r.status == 202 and r.body["state"] == "queued"
    rid = r.body["request_id"]
    d = front.call("DELETE", f"/v1/requests/{rid}")
    assert d.status == 200 and d.body == {"request_id": rid, "state": "cancelled"}
    got = front.call("GET", f"/v1/requests/{rid}")
    assert got.body["state"] == "cancelled" and got.body["error"]["type"] == "Cancelled"
    problem(front.call("DELETE", f"/v1/requests/{rid}"), 409, "request_finished")
    problem(front.call("DELETE", "/v1/requests/99999999"), 404, "unknown_request")
    problem(front.call("GET", "/v1/requests/99999999"), 404, "unknown_request")
    problem(front.call("GET", "/v1/requests/abc"), 400, "bad_frame")
    problem(front.call("GET", "/v1/requests/0"), 400, "invalid_value")


def test_delete_a_running_request(live: Front) -> None:
    """A request a SEP runs cannot be cancelled: 409 request_running."""
    r = live.call("POST", "/v1/requests/SLOW", {"seconds": 2})
    rid = r.body["request_id"]
    wait_state(live, rid, ("running",))
    problem(live.call("DELETE", f"/v1/requests/{rid}"), 409, "request_running")
    assert wait_state(live, rid, ("done",)).body["result"] == {"slept": 2.0}


def test_bad_input_stores_nothing(front: Front) -> None:
    """Each bad request gets its status and problem code, and nothing is queued."""
    limited = create_token(front.region, "limited", allow=["ECHO"])
    huge = json.dumps("x" * (1024 * 1024)).encode()
    cases: list[tuple[Reply, int, str]] = [
        (front.call("POST", "/v1/requests/NOSUCH", 1), 404, "unknown_transaction"),
        (front.call("POST", "/v1/requests/ECHO", raw=b"{not json"), 400, "bad_frame"),
        (front.call("POST", "/v1/requests/ECHO", raw=b""), 400, "bad_frame"),
        (front.call("POST", "/v1/requests/ECHO", raw=b"NaN"), 400, "bad_frame"),
        (front.call("POST", "/v1/requests/ECHO", raw=huge), 413, "frame_too_large"),
        (front.call("POST", "/v1/requests/ECHO", {"k": "a\u0000"}), 400, "invalid_value"),
        (front.call("POST", "/v1/requests/ECHO", ["\ud800"]), 400, "invalid_value"),
        (front.call("POST", "/v1/requests/ECHO", 1, token=None), 401, "unauthorized"),
        (front.call("POST", "/v1/requests/ECHO", 1, token="dsp_wrong"), 401, "unauthorized"),
        (front.call("GET", "/v1/requests/1", token="dsp_wrong"), 401, "unauthorized"),
        (
            front.call("POST", "/v1/requests/ECHO", 1, content_type="text/plain"),
            415,
            "unsupported_media_type",
        ),
        (
            front.call("POST", "/v1/requests/ECHO", raw=b"1", content_type=None),
            415,
            "unsupported_media_type",
        ),
        (front.call("POST", "/v1/requests/SLOW", 1, token=limited), 403, "forbidden"),
        (
            front.call("POST", "/v1/requests/ECHO", 1, headers={"Idempotency-Key": "k" * 201}),
            400,
            "invalid_value",
        ),
        (
            front.call("POST", "/v1/requests/ECHO", 1, headers={"Routing-Key": "r" * 201}),
            400,
            "invalid_value",
        ),
        (front.call("POST", "/v1/requests/ECHO?wait=abc", 1), 400, "invalid_value"),
        (front.call("POST", "/v1/requests/EC%00HO", 1), 400, "invalid_value"),
    ]
    for reply, status, code in cases:
        problem(reply, status, code)
    r = front.call("POST", "/v1/requests/ECHO", 1, token=None)
    assert r.headers["WWW-Authenticate"].startswith("Bearer")
    assert stored(front.region) == 0
    # the same front still takes a good request
    assert front.call("POST", "/v1/requests/ECHO", 1, token=limited).status == 202
    assert stored(front.region) == 1


def test_unknown_route_and_wrong_method(front: Front) -> None:
    problem(front.call("GET", "/v2/nothing"), 404, "not_found")
    r = front.call("PUT", "/v1/requests/1", 1)
    problem(r, 405, "method_not_allowed")
    assert set(r.headers["Allow"].split(", ")) == {"GET", "POST", "DELETE"}
    problem(front.call("GET", "/v1/timers"), 405, "method_not_allowed")


def test_timers_create_and_cancel(front: Front) -> None:
    """POST /v1/timers sets a timer (after, at, cron) in the region's timers; DELETE
    cancels it (204), a second time 404."""
    r = front.call("POST", "/v1/timers", {"transid": "ECHO", "data": {"a": 1}, "after": 3600})
    assert r.status == 201, r.body
    reqid = r.body["reqid"]
    assert r.headers["Location"] == f"/v1/timers/{reqid}"
    at = front.call(
        "POST", "/v1/timers", {"transid": "ECHO", "at": "2099-01-01T00:00:00Z", "reqid": "y2k99"}
    )
    assert at.status == 201 and at.body["reqid"] == "y2k99"
    cron = front.call(
        "POST", "/v1/timers", {"transid": "ECHO", "cron": "0 3 * * *", "tz": "Europe/Paris"}
    )
    assert cron.status == 201, cron.body
    rows = front.region.conn.execute(
        "SELECT reqid, transid, payload, cron, tz FROM dispatcher_xr.timer WHERE region = 'test'"
    ).fetchall()
    by_reqid = {row["reqid"]: row for row in rows}
    assert by_reqid[reqid]["payload"] == {"a": 1}
    assert by_reqid[cron.body["reqid"]]["tz"] == "Europe/Paris"
    assert set(by_reqid) == {reqid, "y2k99", cron.body["reqid"]}
    problem(
        front.call(
            "POST",
            "/v1/timers",
            {"transid": "ECHO", "at": "2099-01-01T00:00:00Z", "reqid": "y2k99"},
        ),
        409,
        "duplicate_timer",
    )
    d = front.call("DELETE", f"/v1/timers/{reqid}")
    assert d.status == 204 and d.body is None
    problem(front.call("DELETE", f"/v1/timers/{reqid}"), 404, "unknown_timer")
    # bad timers
    for body, status, code in [
        ({"transid": "ECHO"}, 400, "bad_frame"),
        ({"transid": "ECHO", "after": 1, "at": "2099-01-01T00:00:00Z"}, 400, "bad_frame"),
        ({"transid": "ECHO", "after": -1}, 400, "invalid_value"),
        ({"transid": "ECHO", "after": 1e300}, 400, "invalid_value"),
        ({"transid": "ECHO", "after": 36501 * 86400}, 400, "invalid_value"),
        ({"transid": "ECHO", "at": "not a time"}, 400, "invalid_value"),
        ({"transid": "ECHO", "after": "soon"}, 400, "bad_frame"),
        ({"transid": "ECHO", "at": "2099-01-01T00:00:00"}, 400, "invalid_value"),
        ({"transid": "ECHO", "cron": "61 * * * *"}, 400, "invalid_value"),
        ({"transid": "ECHO", "after": 1, "reqid": "bad reqid"}, 400, "invalid_value"),
        ({"transid": "ECHO", "after": 1, "reqid": "r" * 65}, 400, "invalid_value"),
        ({"transid": "ECHO", "after": 1, "tz": "UTC"}, 400, "bad_frame"),
        ({"transid": "NOSUCH", "after": 1}, 404, "unknown_transaction"),
        ({"transid": "ECHO", "afer": 3600}, 400, "bad_frame"),  # misspelt: not at once
        ({"transid": "ECHO", "after": 1, "priority": 9}, 400, "bad_frame"),
        ({"transid": "ECHO", "at": "9999-12-31T23:59:59-01:00"}, 400, "invalid_value"),
        ({"transid": "ECHO", "at": "2300-01-01T00:00:00Z"}, 400, "invalid_value"),
        ([1], 400, "bad_frame"),
    ]:
        problem(front.call("POST", "/v1/timers", body), status, code)
    limited = create_token(front.region, "limited", allow=["ECHO"])
    problem(
        front.call("POST", "/v1/timers", {"transid": "SLOW", "after": 1}, token=limited),
        403,
        "forbidden",
    )
    problem(
        front.call("POST", "/v1/timers", {"transid": "ECHO", "after": 1}, token=None),
        401,
        "unauthorized",
    )
    left = front.region.conn.execute(
        "SELECT count(*) AS n FROM dispatcher_xr.timer WHERE region = 'test'"
    ).fetchone()
    assert left is not None and left["n"] == 2


def test_openapi_names_every_route(front: Front) -> None:
    """/openapi.json is OpenAPI 3.1 and lists exactly the routes the app serves."""
    r = http("GET", front.base + "/openapi.json", None, {})
    assert r.status == 200 and r.body == openapi() and r.body["openapi"].startswith("3.1")
    served = {
        (route.resource.canonical, route.method.lower())
        for route in front.server.app.router.routes()
        if route.resource is not None
    }
    documented = {(path, method) for path, item in r.body["paths"].items() for method in item}
    assert served == documented


def test_database_unavailable_and_back(region: Region, db_url: str) -> None:
    """The database goes away: 503 database_unavailable (retryable); it comes back:
    the same front answers again."""
    sync_app(region, APP)
    token = create_token(region, "tester")
    proxy = Proxy(db_url)
    proxy.start()
    url = through(proxy, db_url)
    with running_front(url, "test", db_timeout=1.0) as server:
        f = Front(f"http://127.0.0.1:{server.port}", token, region, server)
        assert f.call("POST", "/v1/requests/ECHO", 1).status == 202
        proxy.stop()
        for _ in range(3):
            r = f.call("POST", "/v1/requests/ECHO", 2)
            problem(r, 503, "database_unavailable")
            assert r.body["retryable"] is True and r.headers["Retry-After"] == "1"
        proxy.start()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            r = f.call("POST", "/v1/requests/ECHO", 3)
            if r.status == 202:
                break
            time.sleep(0.2)
        assert r.status == 202, r.body
        proxy.stop()
    assert stored(region) == 2


def test_the_http_command(cli_env: dict[str, str], region: Region) -> None:
    """`dispatcher http --port P` serves until SIGTERM (run through its click command,
    registered on the root group as dispatcher/cli/__init__.py does)."""
    import signal
    import subprocess
    import sys

    from .listeners import free_port, wait_port
    from .seps import ROOT

    token = create_token(region, "tester")
    port = free_port()
    code = (
        "from dispatcher.cli import cli, main; from dispatcher.cli import http as h; "
        "'http' in cli.commands or h.register(cli); main()"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code, "http", "--port", str(port)],
        env={**cli_env, "DISPATCHER_REGION": "test"},
        cwd=ROOT,
    )
    try:
        wait_port(port, proc)
        r = http(
            "GET",
            f"http://127.0.0.1:{port}/v1/requests/1",
            None,
            {"Authorization": f"Bearer {token}"},
        )
        assert r.status == 404 and r.code == "unknown_request"
        # a second front on the same port: one line, exit 1, at once (it hung before)
        taken = subprocess.run(
            [sys.executable, "-c", code, "http", "--port", str(port)],
            env={**cli_env, "DISPATCHER_REGION": "test"},
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert taken.returncode == 1, taken.stderr
        last = taken.stderr.strip().splitlines()[-1]
        assert last.startswith("error: ") and "address already in use" in last, taken.stderr
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0


def test_a_routing_key_header_keys_the_request(front: Front, conn: psycopg.Connection[Any]) -> None:
    """Routing-Key: the request carries it (it runs only on the SEP that owns the key)."""
    r = front.call("POST", "/v1/requests/ECHO", 1, headers={"Routing-Key": "customer-9"})
    assert r.status == 202
    rid = r.body["request_id"]
    row = conn.execute("SELECT routing_key FROM dispatcher.request WHERE id = %s", [rid]).fetchone()
    assert row is not None and row["routing_key"] == "customer-9"
