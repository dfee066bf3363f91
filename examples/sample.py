"""The sample app that ``dispatcher up`` runs by default.

Try it with ``dispatcher call TRANSID --data JSON``:

- ``ECHO``: a plain request: the result is the data.
- ``SLOW``: sleeps ``{"seconds": N}`` (at most 30), then answers.
- ``ABEND``: raises: the request fails with the error (type, message, traceback).
- ``COUNT``: reads the region database in the task's transaction (``ctx.db``).
- ``CHAT``: a conversation: asks for your name, then answers (``dispatcher connect``).
- ``ORDER``: a pseudo-conversational chain: ORDER asks for a quantity and ends naming
  ``ORDER2`` as the transaction for your next input, with a commarea; ORDER2 confirms.
- ``REMIND``: STARTs ``ECHO`` with a timer (``{"after": seconds, "text": ...}``).
- ``DELIVER``: the built-in HTTP delivery program (``sep.delivery``): makes the HTTP
  call its data describes, at least once, with retries (docs/delivery.md).
"""

from __future__ import annotations

import time
from typing import Any

from dispatcher.gateway import Gateway, ops
from sep import program
from sep.delivery import deliver  # noqa: F401  (DELIVER runs on the sample app's SEPs)


@program("ECHO", priority=5)
def echo(ctx: Any) -> Any:
    """Answers with its data."""
    return ctx.data


@program("SLOW", timeout=60)
def slow(ctx: Any) -> Any:
    """Sleeps {"seconds": N} (at most 30), then answers."""
    seconds = min(float((ctx.data or {}).get("seconds", 1)), 30.0)
    time.sleep(seconds)
    return {"slept": seconds}


@program("ABEND")
def abend(ctx: Any) -> Any:
    """Always fails: shows how an abend is reported."""
    raise ValueError(f"ABEND asked to fail with data {ctx.data!r}")


@program("COUNT")
def count(ctx: Any) -> Any:
    """How many ECHO requests finished: a read in the task's own transaction."""
    n = Gateway(ctx.db).run(ops.sep.sample_done_count(ctx.region_name, "ECHO"))
    return {"echo_done": n}


@program("CHAT")
def chat(ctx: Any) -> Any:
    """A conversation: asks for a name, then greets."""
    name = ctx.converse({"prompt": "What is your name?"}, timeout=120)
    return {"greeting": f"Hello, {name}!"}


@program("ORDER")
def order(ctx: Any) -> Any:
    """First step of a pseudo-conversation: asks for a quantity, ends with RETURN TRANSID."""
    item = (ctx.data or {}).get("item", "widget")
    return ctx.return_transid(
        "ORDER2",
        commarea={"item": item},
        output={"prompt": f"How many {item}s? (your next input goes to ORDER2)"},
    )


@program("ORDER2")
def order2(ctx: Any) -> Any:
    """Second step: reads the commarea left by ORDER."""
    item = (ctx.commarea or {}).get("item", "?")
    qty = ctx.data.get("qty", ctx.data) if isinstance(ctx.data, dict) else ctx.data
    return {"ordered": {"item": item, "quantity": qty}}


@program("REMIND")
def remind(ctx: Any) -> Any:
    """STARTs ECHO after {"after": seconds} with {"text": ...} (a timer)."""
    data = ctx.data or {}
    after = float(data.get("after", 5))
    reqid = ctx.start("ECHO", {"reminder": data.get("text", "hello")}, after=after)
    return {"started": reqid, "after_s": after}
