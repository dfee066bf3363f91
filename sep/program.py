"""The program API: ``@program("TRANSID", ...)`` declares a transaction and its program."""

from __future__ import annotations

import importlib
import inspect
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from dispatcher.gateway import InRegion, ops

__all__ = [
    "AppError",
    "ProgramDef",
    "load_app",
    "program",
    "registered",
    "resolve_program",
    "sync_app",
]


class RetryLater(Exception):
    """Raise it from a program to abend the task and have it run again, not sooner than
    AFTER seconds (when given; the transaction's backoff applies too, whichever is
    later). With no attempts left the request fails as for any abend."""

    def __init__(self, message: str, *, after: float | None = None) -> None:
        super().__init__(message)
        self.after = after


class GiveUp(Exception):
    """Raise it from a program to fail the request for good: it is not run again, even
    with attempts left (a request that can never succeed, say an HTTP 404)."""


class AppError(Exception):
    """An application module or program that cannot be loaded."""


@dataclass(frozen=True)
class ProgramDef:
    """A transaction as a program declares it (stored by ``dispatcher tx sync``)."""

    transid: str
    function: Callable[..., Any]
    priority: int = 0
    cls: str | None = None
    timeout: float | None = None
    max_attempts: int = 1
    requires: tuple[str, ...] = ()
    description: str = ""
    retry_backoff: float = 2.0
    max_backoff: float = 3600.0
    is_async: bool = field(default=False)

    @property
    def program(self) -> str:
        return f"{self.function.__module__}:{self.function.__qualname__}"


# Declarations by the module that holds the function; collectors record what the
# import of an app module declared (its own modules or any it imports); the apps
# loaded so far. Two apps may both declare a TRANSID: each keeps its own.
_BY_MODULE: dict[str, dict[str, ProgramDef]] = {}
_COLLECTORS: list[dict[str, ProgramDef]] = []
_APPS: dict[str, dict[str, ProgramDef]] = {}


def program(
    transid: str,
    *,
    priority: int = 0,
    cls: str | None = None,
    timeout: float | None = None,
    max_attempts: int = 1,
    requires: Sequence[str] = (),
    description: str | None = None,
    retry_backoff: float = 2.0,
    max_backoff: float = 3600.0,
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Declare ``transid`` as a transaction run by the decorated function.

    The function takes a :class:`sep.TaskContext` and returns the task's result (any
    JSON value). ``def`` and ``async def`` both work. An abended task with attempts
    left is retried after ``retry_backoff`` seconds, doubled at each attempt up to
    ``max_backoff`` (+-10% jitter; docs/sep.md, "Retries").
    """
    if not 0 <= priority <= 255:
        raise ValueError(f"priority of {transid} must be between 0 and 255, not {priority}")

    def decorate(fn: Callable[..., Any]) -> Callable[..., Any]:
        d = ProgramDef(
            transid=transid,
            function=fn,
            priority=priority,
            cls=cls,
            timeout=timeout,
            max_attempts=max_attempts,
            requires=tuple(requires),
            description=(description or inspect.getdoc(fn) or "").split("\n")[0],
            retry_backoff=retry_backoff,
            max_backoff=max_backoff,
            is_async=inspect.iscoroutinefunction(fn),
        )
        _BY_MODULE.setdefault(fn.__module__, {})[transid] = d
        for collector in _COLLECTORS:
            collector[transid] = d
        return fn

    return decorate


def registered() -> dict[str, ProgramDef]:
    return {t: d for defs in _BY_MODULE.values() for t, d in defs.items()}


def load_app(module: str) -> dict[str, ProgramDef]:
    """Import an application module and return the transactions it declares (in its
    own modules, or in modules its import brought in)."""
    if module in _APPS:
        return dict(_APPS[module])
    if "." not in sys.path and "" not in sys.path:
        sys.path.insert(0, "")
    collector: dict[str, ProgramDef] = {}
    _COLLECTORS.append(collector)
    try:
        importlib.import_module(module)
    except ModuleNotFoundError as exc:
        raise AppError(f"cannot import app module {module!r}: {exc}") from exc
    except Exception as exc:
        raise AppError(
            f"app module {module!r} failed to import: {type(exc).__name__}: {exc}"
        ) from exc
    finally:
        _COLLECTORS.remove(collector)
    found = dict(collector)
    for mod, defs in _BY_MODULE.items():
        if mod == module or mod.startswith(module + "."):
            for transid, d in defs.items():
                found.setdefault(transid, d)
    if not found:
        raise AppError(f"app module {module!r} declares no transactions (use @program)")
    _APPS[module] = found
    return dict(found)


def resolve_program(path: str) -> Callable[..., Any]:
    """The function named by ``module.path:function``."""
    module_name, _, attr = path.partition(":")
    if not module_name or not attr:
        raise AppError(f"invalid program {path!r}: expected module.path:function")
    try:
        obj: Any = importlib.import_module(module_name)
    except Exception as exc:
        raise AppError(f"program {path!r} is not importable: {type(exc).__name__}: {exc}") from exc
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise AppError(f"program {path!r}: module {module_name!r} has no {attr!r}") from None
    if not callable(obj):
        raise AppError(f"program {path!r} is not callable")
    return obj  # type: ignore[no-any-return]


def sync_app(region: InRegion, module: str) -> list[str]:
    """Store an app's declared transactions in REGION (a gateway bound to the region).

    The fields an operator set with ``dispatcher tx define`` are left as they are, and
    each transaction requires the capability ``app:MODULE`` that SEPs started with
    ``--app MODULE`` have, so that only they run it (docs/sep.md, "Apps")."""
    defs = load_app(module)
    for d in defs.values():
        region.run(
            ops.transaction.define_transaction(
                region.name,
                d.transid,
                d.program,
                priority=d.priority,
                cls=d.cls,
                timeout_s=d.timeout,
                max_attempts=d.max_attempts,
                retry_backoff_s=d.retry_backoff,
                max_backoff_s=d.max_backoff,
                requires=d.requires,
                description=d.description,
                by="app",
                app=module,
            )
        )
    return list(defs)
