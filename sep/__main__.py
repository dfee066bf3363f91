"""One SEP process: ``python -m sep --app MODULE [--capability CAP ...] [--standby]``.

The database and region come from the environment (DISPATCHER_DATABASE_URL or the
embedded server of DISPATCHER_HOME, DISPATCHER_REGION). Exit codes: 0 stopped,
2 bad arguments or app, 3 no room in the region, 4 stopped by force by an operator,
5 declared dead, 6 a task overran its timeout (the SEP abended it and declared itself
dead; see docs/sep.md, "Timeouts"), 1 other errors.
"""

from __future__ import annotations

import argparse
import sys

from dispatcher.config import Settings
from dispatcher.database import database_url
from dispatcher.errors import DispatcherError, NoRoom
from dispatcher.logs import configure_logging
from dispatcher.processes import die_with_parent

from .program import AppError
from .worker import SEPConfig, Worker


def _interval(text: str) -> float:
    """A finite, positive number of seconds of at most an hour (argparse type)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not 0.01 <= value <= 3600:  # also refuses NaN
        raise argparse.ArgumentTypeError(f"must be 0.01 to 3600 seconds, not {text}")
    return value


def main(argv: list[str] | None = None) -> int:
    die_with_parent()  # a SEP started by a supervisor ends with it
    parser = argparse.ArgumentParser(prog="python -m sep", description=__doc__)
    parser.add_argument("--app", help="module whose @program transactions to run")
    parser.add_argument("--capability", action="append", default=[], dest="capabilities")
    parser.add_argument("--standby", action="store_true")
    parser.add_argument("--poll", type=_interval, default=1.0, help="safety poll interval (s)")
    parser.add_argument("--heartbeat", type=_interval, default=2.0, help="heartbeat interval (s)")
    parser.add_argument(
        "--async-commit",
        action="store_true",
        help="completions do not wait for the WAL flush (see docs/sep.md)",
    )
    parser.add_argument(
        "--batch",
        type=int,
        default=1,
        help="requests taken per call; above 1 outcomes are reported together (sep/batch.py)",
    )
    parser.add_argument(
        "--batch-window",
        type=float,
        default=5.0,
        help="with --batch: the longest an outcome waits to be reported (ms)",
    )
    args = parser.parse_args(argv)
    if not 1 <= args.batch <= 1000 or args.batch_window < 0:
        parser.error("--batch must be 1..1000 and --batch-window 0 or more")
    configure_logging()
    settings = Settings.from_env()
    try:
        config = SEPConfig(
            url=database_url(settings),
            region=settings.region,
            app=args.app,
            capabilities=tuple(args.capabilities),
            standby=args.standby,
            poll_interval=args.poll,
            heartbeat_interval=args.heartbeat,
            async_commit=args.async_commit,
            batch=args.batch,
            batch_window=args.batch_window / 1000,
        )
        return Worker(config).run()
    except AppError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except NoRoom as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 3
    except DispatcherError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
