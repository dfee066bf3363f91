"""Programs that do not let their timeout end them (tests/test_sep_timeout.py)."""

from __future__ import annotations

import signal
import time
from typing import Any

from sep import program


@program("T_ECHO")
def echo(ctx: Any) -> Any:
    return ctx.data


@program("T_LATE", timeout=1)
def late(ctx: Any) -> Any:
    """Catches the timeout and returns soon after it: too late to be done."""
    try:
        time.sleep(30)
    except BaseException:
        time.sleep(0.3)
    return "done anyway"


@program("T_CATCH", timeout=1)
def catch(ctx: Any) -> Any:
    """Catches everything, forever."""
    while True:
        try:
            time.sleep(30)
        except BaseException:
            pass


@program("T_RETRY", timeout=1, max_attempts=2)
def retry(ctx: Any) -> Any:
    """Overruns its first attempt (catching everything); the second is quick."""
    while ctx.attempt == 1:
        try:
            time.sleep(30)
        except BaseException:
            pass
    return {"attempt": ctx.attempt}


@program("T_ASYNC_BLOCK", timeout=1)
async def async_block(ctx: Any) -> Any:
    """An async program that blocks its event loop."""
    time.sleep(30)
    return "done anyway"


@program("T_NO_SIGNALS", timeout=1)
def no_signals(ctx: Any) -> Any:
    """Ignores the alarm the timeout sends."""
    signal.signal(signal.SIGALRM, signal.SIG_IGN)
    time.sleep(30)
    return "done anyway"


@program("T_DB_SLEEP", timeout=1)
def db_sleep(ctx: Any) -> Any:
    """Blocks in a long statement (a C call) of its own transaction, catching all."""
    while True:
        try:
            ctx.db.execute("SELECT pg_sleep(30)")
        except BaseException:
            pass


@program("T_GIL", timeout=1)
def gil(ctx: Any) -> Any:
    """A C call that holds the GIL and never checks for signals: no thread of the SEP
    runs until it returns (in hours)."""
    return sum(range(10**13))


@program("T_CHAT")
def chat(ctx: Any) -> Any:
    """Waits long for its client (as the sample's conversation does)."""
    return {"hello": ctx.converse({"prompt": "name?"}, timeout=120)}


@program("T_NAP")
def nap(ctx: Any) -> Any:
    """Sleeps DATA seconds (keeps its SEP busy while a test queues work behind it)."""
    time.sleep(float(ctx.data))
    return "rested"
