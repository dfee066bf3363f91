"""Run a module with this process's wall clock shifted, to test clock skew.

``python -m tests.clockshift SECONDS MODULE [ARG...]`` runs MODULE as ``__main__``
after shifting ``time.time``, ``time.time_ns`` and ``datetime.datetime.now`` /
``utcnow`` / ``today`` by SECONDS (negative: the clock is behind). ``time.monotonic``
is left alone (it is no time of day). Pure Python: CI needs nothing extra.
"""

from __future__ import annotations

import datetime
import runpy
import sys
import time
from typing import Any

import psycopg  # noqa: F401  (psycopg binds its adapters to the real datetime class first)

_real_time = time.time
_real_time_ns = time.time_ns
_RealDatetime = datetime.datetime


def install(shift_s: float) -> None:
    """Shift this process's wall clock by SHIFT_S seconds."""
    delta = datetime.timedelta(seconds=shift_s)
    time.time = lambda: _real_time() + shift_s
    time.time_ns = lambda: _real_time_ns() + int(shift_s * 1e9)

    class _Meta(type):
        def __instancecheck__(cls, obj: Any) -> bool:
            return isinstance(obj, _RealDatetime)

        def __subclasscheck__(cls, sub: Any) -> bool:
            return issubclass(sub, _RealDatetime)

    class ShiftedDatetime(_RealDatetime, metaclass=_Meta):
        @classmethod
        def now(cls, tz: Any = None) -> Any:
            return _RealDatetime.now(tz) + delta

        @classmethod
        def utcnow(cls) -> Any:
            return _RealDatetime.now(datetime.UTC).replace(tzinfo=None) + delta

        @classmethod
        def today(cls) -> Any:
            return _RealDatetime.now() + delta

    datetime.datetime = ShiftedDatetime  # type: ignore[misc]


def main() -> None:
    shift, module, *args = sys.argv[1:]
    install(float(shift))
    sys.argv = [module, *args]
    runpy.run_module(module, run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
