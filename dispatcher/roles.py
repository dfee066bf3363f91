"""The database role each kind of process of a region works with (least privilege).

Revision 0005 (sql/schema/080_operations.sql) creates five roles: ``dispatcher_listener``
(the listener and the HTTP front), ``dispatcher_sep`` (SEPs and their supervisor),
``dispatcher_monitor`` (the event monitor), ``dispatcher_viewer`` (the status page:
reads only) and ``dispatcher_operator`` (the CLI). A process of kind K connects with,
in this order:

1. ``K_database_url`` when set (``DISPATCHER_LISTENER_DATABASE_URL``,
   ``DISPATCHER_SEP_DATABASE_URL``, ``DISPATCHER_MONITOR_DATABASE_URL``): a login of
   its own, made a member of its role by the operator (docs/operations.md);
2. else the region's URL with its role taken at connection (``options=-c role=...``),
   when ``database_roles`` is ``auto`` (the default) and the login may take it (a
   superuser, the embedded server's login, may), or ``on`` (refused to start if not).
   A SEP's connection is also its programs' (``ctx.db``, whose work commits with the
   task's outcome and needs rights on the app's own tables): with ``auto`` a SEP keeps
   the login's rights; ``on`` (grant the app's tables to ``dispatcher_sep``) or
   ``sep_database_url`` gives it its role;
3. else the region's URL as it is (``database_roles = "off"``, or ``auto`` with a
   login that is not a member of the role: logged ``database_role_not_taken``).
"""

from __future__ import annotations

import re
from typing import Literal

from psycopg.conninfo import conninfo_to_dict, make_conninfo

from .config import ConfigError, Settings, env_var
from .gateway import Gateway, ops

__all__ = [
    "OWN_URL_KEY",
    "ROLE_OF",
    "ProcessKind",
    "own_url",
    "process_url",
    "process_url_of",
    "with_role",
]

ProcessKind = Literal["listener", "http", "sep", "monitor", "web"]

ROLE_OF: dict[ProcessKind, str] = {
    "listener": "dispatcher_listener",
    "http": "dispatcher_listener",
    "sep": "dispatcher_sep",
    "monitor": "dispatcher_monitor",
    "web": "dispatcher_viewer",  # the status page: reads only
}

# the setting of a kind's own URL (the HTTP front shares the listener's; the status page
# has none: it takes the viewer's role on the region's URL)
OWN_URL_KEY: dict[ProcessKind, str | None] = {
    "listener": "listener_database_url",
    "http": "listener_database_url",
    "sep": "sep_database_url",
    "monitor": "monitor_database_url",
    "web": None,
}

_ROLE_OPTION = re.compile(r"-c\s*role=\S+")


def with_role(url: str, role: str) -> str:
    """URL whose connections work as ROLE (any role option it had is replaced)."""
    options = str(conninfo_to_dict(url).get("options") or "")
    options = _ROLE_OPTION.sub("", options).strip()
    return make_conninfo(url, options=f"{options} -c role={role}".strip())


def own_url(settings: Settings, kind: ProcessKind) -> str | None:
    """The URL configured for KIND's processes, if any."""
    key = OWN_URL_KEY[kind]
    return None if key is None else settings.value(key)


def process_url(settings: Settings, kind: ProcessKind, url: str, db: Gateway) -> str:
    """The URL a process of KIND connects with (see the module's text); URL is the
    region's, DB a connection on it (to ask whether the login may take the role).
    Logged as ``database_role`` (kind, role, how)."""
    from .logs import get_logger

    log = get_logger("roles")
    own = own_url(settings, kind)
    if own:
        log.info("database_role", kind=kind, role="its own login", how=OWN_URL_KEY[kind])
        return own
    if settings.database_roles == "off":
        log.info("database_role", kind=kind, role="the region's login", how="database_roles=off")
        return url
    if settings.database_roles == "auto" and kind == "sep":
        # a SEP's connection is its programs' too (ctx.db): their work needs rights on
        # the app's own tables, which only the operator knows; on, or sep_database_url
        log.info("database_role", kind=kind, role="the region's login", how="auto: programs")
        return url
    role = ROLE_OF[kind]
    if db.run(ops.role.may_take_role(role)):
        log.info("database_role", kind=kind, role=role, how="set role")
        return with_role(url, role)
    if settings.database_roles == "on":
        raise ConfigError(
            f"database_roles is on, but the database login may not take the role {role} "
            f"(GRANT {role} TO <login>{_or_own_url(kind)})"
        )
    log.warning(
        "database_role_not_taken",
        kind=kind,
        role=role,
        why=f"the login is no member (GRANT {role} TO the login{_or_own_url(kind)})",
    )
    return url


def _or_own_url(kind: ProcessKind) -> str:
    key = OWN_URL_KEY[kind]
    return "" if key is None else f", or set {env_var(key)}"


def process_url_of(settings: Settings, kind: ProcessKind, url: str) -> str:
    """process_url for a process started on its own (``python -m sep``): URL as it is
    when it names a role already (a supervisor passes its own to its SEPs)."""
    own = own_url(settings, kind)
    if own:
        return own
    if _ROLE_OPTION.search(str(conninfo_to_dict(url).get("options") or "")):
        return url
    from .database import connect

    with connect(url, application_name="dispatcher-roles") as conn:
        return process_url(settings, kind, url, Gateway(conn))
