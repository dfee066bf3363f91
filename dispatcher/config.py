"""Where the dispatcher finds its database and which region it serves."""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path

__all__ = ["DEFAULT_HOME", "DEFAULT_REGION", "Settings"]

DEFAULT_REGION = "default"
DEFAULT_HOME = Path("~/.dispatcher")


@dataclass(frozen=True)
class Settings:
    """Configuration shared by every process of a region.

    - ``home``: ``DISPATCHER_HOME`` (default ``~/.dispatcher``); the embedded
      PostgreSQL keeps its data in ``home/pgdata``.
    - ``database_url``: ``DISPATCHER_DATABASE_URL``; when set, the embedded server
      is not used.
    - ``region``: ``DISPATCHER_REGION`` (default ``default``).
    - ``cross_region_url``: ``DISPATCHER_CROSS_REGION_URL``; timers live there when
      set, else in the region database.
    """

    home: Path
    database_url: str | None
    region: str
    cross_region_url: str | None = None

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> Settings:
        e = os.environ if env is None else env
        home = Path(e.get("DISPATCHER_HOME") or DEFAULT_HOME).expanduser()
        return cls(
            home=home,
            database_url=e.get("DISPATCHER_DATABASE_URL") or None,
            region=e.get("DISPATCHER_REGION") or DEFAULT_REGION,
            cross_region_url=e.get("DISPATCHER_CROSS_REGION_URL") or None,
        )

    def with_region(self, region: str | None) -> Settings:
        return self if not region else replace(self, region=region)

    @property
    def pgdata(self) -> Path:
        return self.home / "pgdata"
