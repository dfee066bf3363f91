"""Transaction definitions and transaction classes (sql/queries/transaction.sql)."""

from __future__ import annotations

from collections.abc import Collection, Sequence

from ..op import Op, Row, all_rows, one_row

__all__ = [
    "TRANSACTION_FIELDS",
    "define_transaction",
    "delete_transaction",
    "list_classes",
    "list_transactions",
    "set_class",
]

# The fields of a transaction definition, as define_transaction_v2 names them.
TRANSACTION_FIELDS = (
    "program",
    "priority",
    "class",
    "timeout",
    "max_attempts",
    "retry_backoff",
    "max_backoff",
    "requires",
    "description",
)


def define_transaction(
    region: str,
    transid: str,
    program: str | None = None,
    *,
    priority: int | None = 0,
    cls: str | None = None,
    timeout_s: float | None = None,
    max_attempts: int | None = 1,
    retry_backoff_s: float | None = 2.0,
    max_backoff_s: float | None = 3600.0,
    requires: Sequence[str] | None = (),
    description: str | None = "",
    given: Collection[str] | None = None,
    by: str = "operator",
    app: str | None = None,
    release: Collection[str] = (),
) -> Op[Row]:
    """Define or redefine TRANSID (define_transaction_v2).

    ``given``: the fields this call sets (names in :data:`TRANSACTION_FIELDS`;
    default: all of them); the others keep their value, or their default for a new
    transaction. ``by="operator"`` (``tx define``) records the fields given as the
    operator's, which ``by="app"`` (``tx sync``) then leaves alone; ``app``: with
    ``by="app"``, the app module that declares the transaction (its requests then
    need the SEP capability ``app:MODULE``). ``release``: fields an operator hands
    back to the app."""
    params = {
        "region": region,
        "transid": transid,
        "given": list(TRANSACTION_FIELDS if given is None else given),
        "by": by,
        "program": program,
        "priority": priority,
        "class": cls,
        "timeout_s": timeout_s,
        "max_attempts": max_attempts,
        "retry_backoff_s": retry_backoff_s,
        "max_backoff_s": max_backoff_s,
        "requires": None if requires is None else list(requires),
        "description": description,
        "app": app,
        "release": list(release),
    }
    return Op("define_transaction", params, one_row("define_transaction"))


def list_transactions(region: str) -> Op[list[Row]]:
    return Op("list_transactions", {"region": region}, all_rows)


def set_class(region: str, cls: str, max_active: int) -> Op[Row]:
    params = {"region": region, "class": cls, "max_active": max_active}
    return Op("set_class", params, one_row("set_class"))


def list_classes(region: str) -> Op[list[Row]]:
    return Op("list_classes", {"region": region}, all_rows)


def delete_transaction(region: str, transid: str) -> Op[Row]:
    """Delete TRANSID unless requests of it are queued or running: found, waiting (how
    many are), deleted."""
    params = {"region": region, "transid": transid}
    return Op("delete_transaction", params, one_row("delete_transaction"))
