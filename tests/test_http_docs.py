"""The curl examples of docs/http.md, run as they are written (bash and the machine's
curl; without curl, the same command line parsed and sent with urllib) against a live
HTTP front with SEPs of the sample app, each answer checked against the one shown."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from dispatcher.region import Region
from dispatcher.tokens import create_token
from sep.program import sync_app

from .http_front import http, running_front
from .seps import running_seps

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "http.md"
APP = "dispatcher_examples.sample"


@dataclass
class Example:
    command: str
    status: str | None  # "HTTP/1.1 200 OK", when the example shows it (curl -i)
    headers: dict[str, str]
    body: str


def examples(text: str) -> list[Example]:
    """Every `$ curl ...` of the ```console blocks of TEXT, with the answer shown."""
    found = []
    for block in re.findall(r"```console\n(.*?)```", text, flags=re.S):
        lines = block.splitlines()
        i = 0
        while i < len(lines):
            assert lines[i].startswith("$ "), f"not a command: {lines[i]!r}"
            command = lines[i][2:]
            i += 1
            shown: list[str] = []
            while i < len(lines) and not lines[i].startswith("$ "):
                shown.append(lines[i])
                i += 1
            found.append(parse_answer(command, shown))
    return found


def parse_answer(command: str, lines: list[str]) -> Example:
    status = None
    headers: dict[str, str] = {}
    if lines and lines[0].startswith("HTTP/"):
        status = lines[0].strip()
        lines = lines[1:]
        while lines and lines[0].strip():
            name, _, value = lines[0].partition(":")
            headers[name.strip().lower()] = value.strip()
            lines = lines[1:]
    return Example(command, status, headers, "\n".join(lines).strip())


def run_curl(command: str, env: dict[str, str]) -> str:
    out = subprocess.run(
        ["bash", "-c", command], env=env, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    return out.stdout


def run_parsed(command: str, env: dict[str, str]) -> str:
    """The curl command line done with urllib (flags -s -i -X -H -d), printed as curl
    prints it."""
    words = shlex.split(command)
    assert words[0] == "curl"
    method, data, show, url = "GET", None, False, ""
    headers: dict[str, str] = {}
    it = iter(words[1:])
    for w in it:
        if w in ("-s", "-si", "-is", "-i"):
            show = show or "i" in w
        elif w == "-X":
            method = next(it)
        elif w == "-H":
            name, _, value = next(it).partition(":")
            headers[name.strip()] = value.strip()
        elif w == "-d":
            data = next(it).encode()
            method = "POST" if method == "GET" else method
        else:
            url = w
    for k, v in env.items():
        url = url.replace(f"${k}", v)
        headers = {n: h.replace(f"${k}", v) for n, h in headers.items()}
    if data is not None:
        headers.setdefault("Content-Type", "application/x-www-form-urlencoded")
    r = http(method, url, data, headers)
    body = "" if r.body is None else json.dumps(r.body)
    if not show:
        return body
    from http.client import responses

    head = [f"HTTP/1.1 {r.status} {responses[r.status]}"]
    head += [f"{k}: {v}" for k, v in r.headers.items()]
    return "\r\n".join(head) + "\r\n\r\n" + body


def matches(shown: Any, got: Any, key: str = "") -> bool:
    """Does GOT match the answer SHOWN? Exactly, but for what varies between runs:
    timings, a detail or traceback text, and a request shown queued that a SEP may have
    taken already."""
    if key == "timings":
        return isinstance(got, dict) and set(got) == set(shown)
    if key in ("detail", "traceback"):
        return isinstance(got, str)
    if key == "state" and shown == "queued":
        return got in ("queued", "dispatched", "running", "done")
    if isinstance(shown, dict):
        return (
            isinstance(got, dict)
            and set(shown) == set(got)
            and all(matches(shown[k], got[k], k) for k in shown)
        )
    if isinstance(shown, list):
        return (
            isinstance(got, list)
            and len(got) == len(shown)
            and all(matches(a, b) for a, b in zip(shown, got, strict=True))
        )
    return bool(shown == got and type(shown) is type(got))


@pytest.fixture
def env(region: Region, db_url: str) -> Iterator[dict[str, str]]:
    sync_app(region, APP)
    token = create_token(region, "alice")
    with running_seps(db_url, "test", 2, app=APP), running_front(db_url, "test") as front:
        yield {**os.environ, "HTTP": f"http://127.0.0.1:{front.port}", "TOKEN": token}


def test_the_doc_has_examples() -> None:
    found = examples(DOC.read_text(encoding="utf-8"))
    assert len(found) >= 10 and all(e.command.startswith("curl ") for e in found)


@pytest.mark.parametrize("runner", ["curl", "parsed"])
def test_the_curl_examples_answer_as_documented(env: dict[str, str], runner: str) -> None:
    """Each example, in order, gets the answer shown (with curl, as written; and parsed
    and sent with urllib, the way used where curl is missing)."""
    if runner == "curl" and not shutil.which("curl"):
        pytest.skip("no curl on this machine: the parsed run checks the examples")
    run = run_curl if runner == "curl" else run_parsed
    for ex in examples(DOC.read_text(encoding="utf-8")):
        out = run(ex.command, env)
        where = f"\n$ {ex.command}\n{out}"
        if ex.status is not None:
            head, _, body = out.replace("\r\n", "\n").partition("\n\n")
            status, *lines = head.splitlines()
            assert status.strip() == ex.status, where
            got = {}
            for line in lines:
                name, _, value = line.partition(":")
                got[name.strip().lower()] = value.strip()
            for name, value in ex.headers.items():
                assert got.get(name) == value, f"header {name}: {where}"
        else:
            body = out
        if ex.body:
            assert matches(json.loads(ex.body), json.loads(body)), where
        else:
            assert not body.strip(), where
