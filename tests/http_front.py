"""Helpers to run the HTTP front (listener/http.py) in tests: on a free port, in a
thread of its own (its own event loop), against the test database."""

from __future__ import annotations

import asyncio
import json
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from listener.http import HttpFront


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: Any

    @property
    def code(self) -> Any:
        return self.body.get("code") if isinstance(self.body, dict) else None


def http(method: str, url: str, data: bytes | None, headers: dict[str, str]) -> Reply:
    """One HTTP exchange with urllib (an error status is a Reply too)."""
    req = urllib.request.Request(url, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=90) as r:
            status, hdrs, text = r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as e:
        status, hdrs, text = e.code, dict(e.headers), e.read()
    return Reply(status, hdrs, json.loads(text) if text else None)


@contextmanager
def running_front(db_url: str, region: str, **kwargs: Any) -> Iterator[HttpFront]:
    """An HttpFront serving REGION on a free port (its ``port``), in a thread."""
    ready = threading.Event()
    box: dict[str, Any] = {}

    async def main() -> None:
        front = HttpFront(db_url, region, "127.0.0.1", 0, **kwargs)
        box["front"], box["loop"] = front, asyncio.get_running_loop()
        try:
            await front.start()
        except BaseException as exc:
            box["error"] = exc
            ready.set()
            raise
        ready.set()
        await front.stopping.wait()
        await front.close()

    thread = threading.Thread(target=asyncio.run, args=(main(),), daemon=True)
    thread.start()
    assert ready.wait(30), "the HTTP front did not start"
    if "error" in box:
        raise box["error"]
    front: HttpFront = box["front"]
    try:
        yield front
    finally:
        box["loop"].call_soon_threadsafe(front.stopping.set)
        thread.join(30)
