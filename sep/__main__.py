"""One SEP process: ``python -m sep --app MODULE [--capability CAP ...] [--standby]``.

The database and region come from the environment (DISPATCHER_DATABASE_URL or the
embedded server of DISPATCHER_HOME, DISPATCHER_REGION). Exit codes: 0 stopped,
2 bad arguments or app, 3 no room in the region, 4 stopped by force by an operator,
5 declared dead, 6 a task overran its timeout (the SEP abended it and declared itself
dead; see docs/sep.md, "Timeouts"), 1 other errors.

The options are those of ``dispatcher sep start`` (sep/options.py) but --count.
"""

from __future__ import annotations

import sys
from typing import Any

import click

from dispatcher.config import Settings
from dispatcher.database import database_url
from dispatcher.errors import DispatcherError, NoRoom
from dispatcher.logs import configure_logging
from dispatcher.migrate import ensure_schema
from dispatcher.processes import die_with_parent
from dispatcher.roles import process_url_of

from .options import click_options, make_config
from .program import AppError
from .worker import Worker


@click.command("sep", help=__doc__, context_settings={"help_option_names": ["-h", "--help"]})
@click_options()
def command(sep_options: dict[str, Any]) -> int:
    configure_logging()
    settings = Settings.from_env()
    try:
        url = database_url(settings)
        ensure_schema(url)  # a database at another revision: one line, not a traceback
        url = process_url_of(settings, "sep", url)
        config = make_config(url, settings.region, sep_options)
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


def main(argv: list[str] | None = None) -> int:
    die_with_parent()  # a SEP started by a supervisor ends with it
    try:
        rc = command.main(argv, prog_name="python -m sep", standalone_mode=False)
    except click.ClickException as exc:  # bad arguments: usage and exit 2
        exc.show()
        return exc.exit_code
    except click.Abort:
        return 1
    return rc if isinstance(rc, int) else 0


if __name__ == "__main__":
    sys.exit(main())
