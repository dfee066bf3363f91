"""What every part of a listener shares: the region database, the table of its
sessions and its identity (its id in the database, its client port, the address of
its channel). The parts hold a reference to one ListenerState; none owns it."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from uuid import UUID

from psycopg_pool import AsyncConnectionPool

if TYPE_CHECKING:
    from .sessions import Session


@dataclass(eq=False)
class ListenerState:
    region: str
    pool: AsyncConnectionPool[Any]
    log: Any
    stopping: asyncio.Event
    # the client port: the one asked for until the client socket is bound, then its own
    port: int
    sessions: dict[UUID, Session] = field(default_factory=dict)
    # set by the registration (health.py), again after the listener was reaped
    listener_id: UUID | None = None
    # the channel address SEPs send to (routing.py), written into the registration
    address: str = ""
    # sessions this listener serves at once (None: no limit); a hello past it is refused
    max_sessions: int | None = None
    opening: int = 0  # hellos whose session the database is opening
    # the region's channel secret: the first frame on a channel connection carries it
    channel_secret: str = ""
