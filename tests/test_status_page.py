"""The read-only status page (dispatcher/status_page.py, docs/operations.md): its JSON
against a real region, a lost database and its return, the page in a real headless
Chromium (Playwright) watching a request of a real SEP process appear and finish, and
the command line (``dispatcher web``, ``dispatcher up --web-port``)."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psycopg
import pytest
from click.testing import CliRunner

from dispatcher.cli import cli
from dispatcher.gateway import Gateway, ops
from dispatcher.region import Region
from dispatcher.status_page import BANDS, StatusPage
from sep.program import sync_app

from .dbproxy import Proxy, through
from .listeners import free_port
from .seps import ROOT, running_seps, wait_final

APP = "tests.apps.status_page"
XSS = '<script>window.__xss = 1</script><img src=x onerror="window.__xss = 2">'
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def artefacts() -> Path:
    """Where tests keep what a person may want to look at ($DISPATCHER_TEST_ARTEFACTS,
    else tests/artefacts/, which git ignores)."""
    path = Path(os.environ.get("DISPATCHER_TEST_ARTEFACTS") or ROOT / "tests" / "artefacts")
    path.mkdir(parents=True, exist_ok=True)
    return path


# ------------------------------------------------------------------ helpers


def get(url: str) -> tuple[int, dict[str, str], Any]:
    """GET URL: status, headers, the body (JSON decoded when it is JSON)."""
    try:
        with urllib.request.urlopen(url, timeout=30) as r:
            status, headers, raw = r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as e:
        status, headers, raw = e.code, dict(e.headers), e.read()
    if headers.get("Content-Type", "").startswith("application/json"):
        return status, headers, json.loads(raw)
    return status, headers, raw.decode()


def until(what: str, check: Callable[[], Any], timeout: float = 20) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not in {timeout} s")
        time.sleep(0.05)


@contextmanager
def serving(url: str, region: str = "test", **kwargs: Any) -> Iterator[StatusPage]:
    """A StatusPage of REGION on a free port, in a thread of its own (its own loop)."""
    ready = threading.Event()
    box: dict[str, Any] = {}

    async def main() -> None:
        page = StatusPage(url, region, "127.0.0.1", 0, **kwargs)
        box["page"], box["loop"] = page, asyncio.get_running_loop()
        try:
            await page.start()
        except BaseException as exc:
            box["error"] = exc
            ready.set()
            raise
        ready.set()
        await page.stopping.wait()
        await page.close()

    thread = threading.Thread(target=asyncio.run, args=(main(),), daemon=True)
    thread.start()
    assert ready.wait(30), "the status page did not start"
    if "error" in box:
        raise box["error"]
    page: StatusPage = box["page"]
    try:
        yield page
    finally:
        box["loop"].call_soon_threadsafe(page.stopping.set)
        thread.join(30)


def fail_one(region: Region, message: str) -> int:
    """A request of FAIL that abended with MESSAGE (run by a SEP of this test, which is
    paused afterwards: what is queued next stays queued)."""
    sep_id = int(region.register_sep("test-host", 4242)["id"])
    e = region.enqueue("FAIL", {"message": message})
    task = region.claim_next(sep_id) if e.sep_id is None else region.begin(sep_id, e.request_id)
    assert task is not None and task.request_id == e.request_id
    region.complete(sep_id, task, ok=False, error={"type": "ValueError", "message": message})
    region.control_sep(sep_id, "pause")
    return e.request_id


# ------------------------------------------------------------------ /api/status


def test_api_status_shows_the_region(region: Region, db_url: str) -> None:
    """Queued requests in two bands, a failure, a pending timer: /api/status has them;
    the series grows, and ?since= gives only what is newer; the page is one document
    that fetches nothing from elsewhere."""
    region.define_transaction("FAIL", "app:fail", priority=10)
    region.define_transaction("HOT", "app:hot", priority=200)
    failed = fail_one(region, XSS)
    region.enqueue("FAIL", {"message": "later"})
    region.enqueue("FAIL", {"message": "later"})
    region.enqueue("HOT", None)
    Gateway(region.conn).run(
        ops.timer.set_timer("test", "T-1", "HOT", None, delay=dt.timedelta(hours=1))
    )
    with serving(db_url, sample_every=0.1) as page:
        base = f"http://127.0.0.1:{page.port}"
        status, headers, s = get(base + "/api/status")
        assert status == 200, s
        assert headers["Cache-Control"] == "no-store"
        assert (s["region"], s["max_seps"], s["region_state"]) == ("test", 8, "running")
        assert s["seps_by_state"] == {"unavailable": 1}
        (sep,) = s["seps"]
        assert sep["state"] == "unavailable" and sep["paused"] and sep["host"] == "test-host"
        assert sep["current_request"] is None and sep["heartbeat_at"]
        assert s["requests_by_state"] == {"queued": 3}
        assert s["queue_depth"] == {"0-63": 2, "64-127": 0, "128-191": 0, "192-255": 1}
        assert s["oldest_queued"]["transid"] == "FAIL" and s["oldest_queued_age_s"] >= 0
        assert s["finished"]["failed"] == 1 and s["finished"]["done"] == 0
        (f,) = s["failures"]
        assert (f["request_id"], f["transid"], f["attempt"]) == (failed, "FAIL", 1)
        assert (f["error_type"], f["error_message"]) == ("ValueError", XSS) and f["finished_at"]
        t = s["timers"]
        assert t["pending"] == 1 and t["error"] is None
        assert [(x["reqid"], x["transid"]) for x in t["next"]] == [("T-1", "HOT")]
        assert s["series"]["bands"] == list(BANDS) and s["series"]["interval_s"] == 0.1

        # the series grows: the server samples by itself
        points = until(
            "3 samples",
            lambda: (p := get(base + "/api/status")[2]["series"]["points"]) and len(p) >= 3 and p,
        )
        assert points[-1]["depth"] == [2, 0, 0, 1] and points[-1]["running"] == 0
        assert [p["t"] for p in points] == sorted(p["t"] for p in points)
        newer = get(base + f"/api/status?since={points[-1]['t']}")[2]["series"]["points"]
        assert all(p["t"] > points[-1]["t"] for p in newer)
        status, _, bad = get(base + "/api/status?since=soon")
        assert status == 400 and bad["error"] == "invalid_value"

        # the page: one self-contained document, only its own script may run
        status, headers, html = get(base + "/")
        assert status == 200 and headers["Content-Type"].startswith("text/html")
        assert html.count("<script>") == 1 and "src=" not in html and "<link" not in html
        assert "https://" not in html and "http://" not in html.replace(
            "http://www.w3.org/2000/svg", ""
        )
        csp = headers["Content-Security-Policy"]
        assert "default-src 'none'" in csp and "script-src 'sha256-" in csp
    with serving(db_url, region="nowhere") as page:
        status, _, body = get(f"http://127.0.0.1:{page.port}/api/status")
        assert status == 404 and body["error"] == "unknown_region", body


def test_database_down_answers_503_and_comes_back(region: Region, db_url: str) -> None:
    """The database going away: /api/status answers 503 with a JSON error (at once once
    it is known, the series kept), the page still loads; back, it answers 200 again
    without a restart. A database never reachable: 503 too."""
    proxy = Proxy(db_url)
    proxy.start()
    try:
        with serving(through(proxy, db_url), sample_every=0.2, db_timeout=1.0) as page:
            base = f"http://127.0.0.1:{page.port}"
            assert get(base + "/api/status")[0] == 200
            until("a sample", lambda: page.series.points)
            proxy.stop()
            status, headers, body = until(
                "503", lambda: (r := get(base + "/api/status"))[0] == 503 and r
            )
            assert body["error"] == "database_unavailable" and body["message"]
            assert body["region"] == "test" and body["series"]["points"]
            assert headers["Retry-After"] == "2"
            started = time.monotonic()
            assert get(base + "/api/status")[0] == 503
            assert time.monotonic() - started < 0.5  # known to be down: no wait
            assert get(base + "/")[0] == 200
            proxy.start()
            until("200 again", lambda: get(base + "/api/status")[0] == 200, timeout=15)
    finally:
        proxy.stop()
    with serving(
        f"postgresql://nobody@127.0.0.1:{free_port()}/none?connect_timeout=2", db_timeout=1.0
    ) as page:
        status, _, body = get(f"http://127.0.0.1:{page.port}/api/status")
        assert status == 503 and body["error"] == "database_unavailable"
        status, _, html = get(f"http://127.0.0.1:{page.port}/")
        assert status == 200 and "<!DOCTYPE html>" in html


def test_a_stuck_database_answers_503_in_time_and_once_a_second(
    region: Region, db_url: str
) -> None:
    """A database that hangs (a lock held on the region's table) is unavailable within
    seconds, not after it frees; meanwhile and for a broken region (unknown: 404) the
    viewers' requests do not each reach the database (once a second at most)."""

    with serving(db_url, sample_every=60) as page, psycopg.connect(db_url) as locker:
        base = f"http://127.0.0.1:{page.port}/api/status"
        locker.execute("LOCK TABLE dispatcher.region IN ACCESS EXCLUSIVE MODE")
        started = time.monotonic()
        status, _, body = get(base)
        assert status == 503 and body["error"] == "database_unavailable", body
        assert time.monotonic() - started < 8
        locker.rollback()
    region.conn.execute("DELETE FROM dispatcher.region WHERE name = 'test'")
    with serving(db_url, sample_every=60) as page:
        base = f"http://127.0.0.1:{page.port}/api/status"
        reads = page._collect
        calls = 0

        async def counted() -> Any:
            nonlocal calls
            calls += 1
            return await reads()

        page._collect = counted  # type: ignore[method-assign]
        statuses = {get(base)[0] for _ in range(20)}
        assert statuses == {404} and calls <= 3, calls


def test_a_port_in_use_is_refused_and_cleaned_up(db_url: str) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]

        async def main() -> StatusPage:
            page = StatusPage(db_url, "test", "127.0.0.1", port)
            with pytest.raises(OSError):
                await page.start()
            return page

        page = asyncio.run(main())
        assert page.runner is None and page.sampler is None and page.pool.closed


# ------------------------------------------------------------------ in a browser


def _playwright() -> Any:
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("the playwright package is missing: pip install playwright")
    if not os.access(CHROMIUM, os.X_OK):
        pytest.skip(f"{CHROMIUM} is missing: apt-get install chromium")
    return sync_playwright


def test_the_page_in_a_browser(region: Region, db_url: str, tmp_path: Path) -> None:
    """A real Chromium loads the page of a region with one real SEP: a request appears
    running and another queued (counts, SEP table, chart), both finish when the test
    opens their gate (gone from running, counted done); an abend whose message is
    HTML shows as text; a screenshot is kept. A page without its database says so."""
    sync_playwright = _playwright()
    from playwright.sync_api import expect

    sync_app(region, APP)
    gate = tmp_path / "gate"
    shots = artefacts()
    with (
        running_seps(db_url, "test", 1, app=APP),
        serving(db_url, sample_every=0.25) as page,
        sync_playwright() as p,
    ):
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            tab = browser.new_page(viewport={"width": 1280, "height": 900})
            errors: list[str] = []
            tab.on("pageerror", lambda exc: errors.append(str(exc)))
            tab.on("console", lambda m: m.type == "error" and errors.append(m.text))
            tab.goto(f"http://127.0.0.1:{page.port}/?every=0.5")
            expect(tab.locator("#region")).to_have_text("test")
            expect(tab.locator("#status")).to_have_attribute("data-state", "ok")
            expect(tab.locator("#status")).to_contain_text("every 0.5 s")

            failed = region.enqueue("FAIL", {"message": XSS}).request_id
            assert wait_final(region, failed)["state"] == "failed"
            running = region.enqueue("GATE", {"gate": str(gate)}).request_id
            until("running", lambda: region.request(running)["state"] == "running")
            queued = region.enqueue("GATE", {"gate": str(gate)}).request_id
            expect(tab.locator("#stat-running")).to_have_text("1")
            expect(tab.locator("#stat-queued")).to_have_text("1")
            expect(tab.locator("#depth-0")).to_have_text("1")
            expect(tab.locator("#seps tbody td.current")).to_have_text(str(running))
            expect(tab.locator("#stat-failed")).to_have_text("1")
            # the abend's message is text: no element made of it, no script ran
            cell = tab.locator("#failures tbody td.msg").first
            expect(cell).to_have_text(XSS)
            assert tab.locator("#failures script, #failures img").count() == 0
            assert tab.evaluate("window.__xss") is None
            # the chart has drawn the queue of the lowest band
            expect(tab.locator('#chart-svg path[data-band="0-63"]')).to_have_count(1)
            tab.locator('#zoom button[data-span="60"]').click()
            expect(tab.locator('#zoom button[data-span="60"]')).to_have_attribute(
                "aria-pressed", "true"
            )
            tab.screenshot(path=str(shots / "status-page-running.png"), full_page=True)

            gate.touch()
            expect(tab.locator("#stat-running")).to_have_text("0")
            expect(tab.locator("#stat-queued")).to_have_text("0")
            expect(tab.locator("#stat-done")).to_have_text("2")
            expect(tab.locator("#seps tbody td.current")).to_have_text("-")
            assert region.request(queued)["state"] == "done"
            tab.screenshot(path=str(shots / "status-page.png"), full_page=True)
            assert errors == []

            # a page whose database is gone says so, and keeps asking
            dead = f"postgresql://nobody@127.0.0.1:{free_port()}/none?connect_timeout=2"
            with serving(dead, db_timeout=1.0) as down:
                tab.goto(f"http://127.0.0.1:{down.port}/?every=0.5")
                expect(tab.locator("#status")).to_have_attribute("data-state", "db-down")
                expect(tab.locator("#status")).to_contain_text("database unavailable")
                expect(tab.locator("#region")).to_have_text("test")
                tab.screenshot(path=str(shots / "status-page-db-down.png"))
        finally:
            browser.close()
    assert (shots / "status-page.png").stat().st_size > 10_000


# ------------------------------------------------------------------ the command line


def _run_web(cli_env: dict[str, str], *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "dispatcher", "web", *args],
        env=cli_env,
        cwd=ROOT,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_dispatcher_web_serves_and_refuses_a_port_in_use(
    region: Region, cli_env: dict[str, str]
) -> None:
    """``dispatcher web --port 0`` says where it serves, answers, and ends on SIGTERM;
    a port in use: one error line, exit 1."""
    proc = _run_web(cli_env, "--port", "0")
    try:
        assert proc.stderr is not None
        line = proc.stderr.readline().strip()
        assert line.startswith("web on 127.0.0.1:"), line
        port = int(line.rsplit(":", 1)[1])
        status, _, body = get(f"http://127.0.0.1:{port}/api/status")
        assert status == 200 and body["region"] == "test"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        out = subprocess.run(
            [sys.executable, "-m", "dispatcher", "web", "--port", str(port)],
            env=cli_env,
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
        )
    lines = out.stderr.strip().splitlines()
    assert out.returncode == 1, out.stderr
    assert len(lines) == 1 and lines[0].startswith("error: "), out.stderr
    assert f"127.0.0.1:{port}" in lines[0] and "in use" in lines[0], lines


def test_up_refuses_a_web_port_in_use(tmp_path: Path) -> None:
    """``up --web-port`` of a port in use is refused before anything starts, naming
    --no-web; the status page may not share the HTTP front's port."""
    env = {"DISPATCHER_HOME": str(tmp_path / "h"), "DISPATCHER_CONFIG": None}
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        args = ["up", "--port", str(free_port()), "--http-port", str(free_port())]
        result = CliRunner().invoke(cli, [*args, "--web-port", str(port)], env=env)
    assert result.exit_code == 2, result.output
    assert "the status page cannot listen" in result.output and "--no-web" in result.output
    same = free_port()
    args = ["up", "--port", str(free_port()), "--http-port", str(same), "--web-port", str(same)]
    result = CliRunner().invoke(cli, args, env=env)
    assert result.exit_code == 2 and "--http-port" in result.output, result.output
    assert not (tmp_path / "h" / "pgdata").exists()  # nothing started


def test_a_request_addressed_to_another_name_is_refused() -> None:
    """DNS rebinding: a Host that is not this machine (an IP, localhost, its name, the
    --host given) gets 421 and no data; the names of this machine pass."""
    from dispatcher.status_page import _known, own_names

    own = own_names("127.0.0.1")
    for host in ("127.0.0.1:7390", "[::1]:7390", "localhost", "app.localhost:80", None):
        assert _known(host, own), host
    for host in ("attacker.example", "attacker.example:7390", "127.0.0.1.evil.example"):
        assert not _known(host, own), host
