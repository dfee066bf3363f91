"""A test app for real SEP processes."""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any

from sep import program


@program("ECHO")
def echo(ctx: Any) -> Any:
    return ctx.data


@program("AECHO")
async def aecho(ctx: Any) -> Any:
    await asyncio.sleep(0.01)
    return {"async": ctx.data}


@program("BOOM")
def boom(ctx: Any) -> Any:
    ctx.db.execute("INSERT INTO app_effect (request_id, n) VALUES (%s, %s)", [ctx.request_id, 1])
    raise ValueError("boom")


@program("FLAKY", max_attempts=3)
def flaky(ctx: Any) -> Any:
    if ctx.attempt < 3:
        raise RuntimeError(f"attempt {ctx.attempt} fails")
    return {"attempt": ctx.attempt}


@program("WRITE")
def write(ctx: Any) -> Any:
    """Writes one row per request; the unique key proves exactly-once effects."""
    ctx.db.execute(
        "INSERT INTO app_effect (request_id, n) VALUES (%s, %s)",
        [ctx.request_id, (ctx.data or {}).get("n", 0)],
    )
    delay = (ctx.data or {}).get("sleep", 0)
    if delay:
        time.sleep(delay)
    return {"pid": os.getpid()}


@program("STARTER")
def starter(ctx: Any) -> Any:
    rid = ctx.start("ECHO", {"from": ctx.request_id})
    if (ctx.data or {}).get("fail"):
        raise RuntimeError("abend after START")
    return {"started": rid}


@program("SLEEPY", timeout=0.3)
def sleepy(ctx: Any) -> Any:
    time.sleep(5)
    return "never"


@program("ASLEEPY", timeout=0.3)
async def asleepy(ctx: Any) -> Any:
    await asyncio.sleep(5)
    return "never"


@program("HOLD")
def hold(ctx: Any) -> Any:
    time.sleep(float((ctx.data or {}).get("seconds", 1)))
    return "held"


@program("NOTJSON")
def notjson(ctx: Any) -> Any:
    return {1, 2, 3}


@program("TOUCH")
def touch(ctx: Any) -> Any:
    """An effect outside the database: one line per run in the file named by the data."""
    with open(ctx.data["path"], "a") as f:
        f.write(f"{ctx.request_id}:{ctx.attempt}\n")
    return "touched"


@program("BIG")
def big(ctx: Any) -> Any:
    """A result of about ``size`` bytes (default 2 MB): larger than a client frame."""
    return {"blob": "x" * int((ctx.data or {}).get("size", 2_000_000))}


@program("BIGOUT")
def big_out(ctx: Any) -> Any:
    """Output of about ``size`` bytes, then the result "sent"."""
    ctx.send({"blob": "x" * int((ctx.data or {}).get("size", 2_000_000))})
    return "sent"


@program("NULOUT")
def nul_out(ctx: Any) -> Any:
    """A result PostgreSQL cannot store (a NUL character, or a lone surrogate)."""
    return {"s": "bad\x00"} if ctx.data != "surrogate" else ["\ud800"]
