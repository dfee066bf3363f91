"""A second test app, as an operator's own module: tests copy it to a directory of its
own as the top-level module ``myapp``, which only the SEPs started there can import."""

from __future__ import annotations

import os
from typing import Any

from sep import program


@program("MYECHO")
def my_echo(ctx: Any) -> Any:
    """Answers with the data and the pid of the SEP that ran it."""
    return {"app": "myapp", "data": ctx.data, "pid": os.getpid()}


@program("MYFAIL", max_attempts=2, retry_backoff=0.01)
def my_fail(ctx: Any) -> Any:
    """Abends on its first attempt; the retry must also stay on myapp's SEPs."""
    if ctx.attempt < 2:
        raise RuntimeError("first attempt fails")
    return {"app": "myapp", "attempt": ctx.attempt, "pid": os.getpid()}
