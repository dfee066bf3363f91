"""The listener: client sessions over a socket (docs/protocol.md, docs/listener.md).

Each client connection is a session registered in the region database. A call goes
through the enqueue procedure; when it returns a SEP, the listener hands the task to
that SEP over the internal channel (no database poll); else a SEP takes it itself.
SEPs send a task's output and its end straight back to the listener's own channel
socket, and the listener routes them to the session. A slow poll of outcomes is the
safety net for an end frame that never came (a SEP that died after its commit).

``Listener`` only wires the parts together and starts and stops them:

- sessions.py: client sessions and the client protocol (hello, call, input, result_of);
- routing.py: hand-over to SEPs (the task and address enqueue answered), messages from SEPs;
- outcomes.py: answering a call with its request's outcome, the outcome poll;
- group_commit.py: calls that arrive together share one enqueue and one commit;
- health.py: registration, heartbeat, reaping, and a lost database (Health.guard);
- frames.py: pure helpers (reply frames, checks of call frames, error codes);
- state.py: what the parts share (the pool, the session table, the listener's id).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import ssl
from typing import Any
from uuid import UUID

from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool

from dispatcher.eventloop import cannot_listen
from dispatcher.logs import get_logger
from dispatcher.processes import socket_dir
from dispatcher.protocol import MAX_FRAME, error

from .group_commit import GroupCommit
from .health import Health
from .outcomes import Outcomes
from .routing import Routing
from .sessions import Call, ClientSessions, Session
from .state import ListenerState

__all__ = ["Call", "GroupCommit", "Listener", "Session"]


class Listener:
    def __init__(
        self,
        url: str,
        region: str,
        host: str = "127.0.0.1",
        port: int = 7300,
        tls: ssl.SSLContext | None = None,
        heartbeat_interval: float = 2.0,
        dead_after: float = 10.0,
        poll_interval: float = 1.0,
        channel_host: str | None = None,
        reuse_port: bool = False,
        max_sessions: int | None = None,
    ) -> None:
        self.url = url
        self.reuse_port = reuse_port
        self.region = region
        self.host = host
        self.tls = tls
        self.heartbeat_interval = heartbeat_interval
        self.dead_after = dead_after
        self.poll_interval = poll_interval
        self.channel_host = channel_host
        # bound now (logging is configured before a listener is made): a lazy logger
        # would build itself anew for every event, twice per call
        self.log = get_logger("listener", region=region, pid=os.getpid()).bind()
        self.stopping = asyncio.Event()
        self._sockdir = socket_dir("listener")
        self._tasks: list[asyncio.Task[Any]] = []
        self.pool = AsyncConnectionPool(
            url,
            min_size=2,
            max_size=16,
            open=False,
            timeout=5.0,
            kwargs={
                "autocommit": True,
                "row_factory": dict_row,
                "application_name": "dispatcher-listener",
            },
        )
        self._client_server: asyncio.Server | None = None
        self.state = ListenerState(region, self.pool, self.log, self.stopping, port)
        self.state.max_sessions = max_sessions
        self.enqueuer = GroupCommit(self.pool, region)
        self.health = Health(self.state, heartbeat_interval, dead_after)
        self.outcomes = Outcomes(self.state, self.health, poll_interval)
        self.routing = Routing(self.state, self.outcomes)
        self.clients = ClientSessions(
            self.state, self.health, self.routing, self.outcomes, self.enqueuer
        )

    # the listener's identity and sessions live in the shared state
    @property
    def port(self) -> int:
        return self.state.port

    @property
    def address(self) -> str:
        return self.state.address

    @property
    def listener_id(self) -> UUID | None:
        return self.state.listener_id

    @property
    def sessions(self) -> dict[UUID, Session]:
        return self.state.sessions

    @property
    def db_ok(self) -> bool:
        return self.health.ok

    async def start(self) -> None:
        await self.pool.open(wait=False)
        await self.routing.start(self.channel_host, self._sockdir / "listener.sock")
        await self.health.register()
        try:
            self._client_server = await asyncio.start_server(
                self.clients.client,
                self.host,
                self.state.port,
                ssl=self.tls,
                limit=MAX_FRAME + 8,
                reuse_port=self.reuse_port or None,  # several listeners on one port
            )
        except OSError as exc:
            raise cannot_listen("the listener", self.host, self.state.port, exc) from None
        sock = self._client_server.sockets[0]
        self.state.port = int(sock.getsockname()[1])
        self._tasks = [
            asyncio.create_task(self.enqueuer.run()),
            asyncio.create_task(self.health.heartbeat()),
            asyncio.create_task(self.outcomes.poll()),
        ]
        self.log.info(
            "listener_started",
            host=self.host,
            port=self.port,
            listener=str(self.listener_id),
            tls=self.tls is not None,
            reuse_port=self.reuse_port,
            loop=type(asyncio.get_running_loop()).__module__.split(".")[0],  # uvloop?
        )

    async def serve(self) -> None:
        await self.start()
        await self.stopping.wait()
        await self.close()

    async def close(self, grace: float = 10.0) -> None:
        self.stopping.set()
        if self._client_server is not None:
            self._client_server.close()
        # a conversation waiting for its client would wait out the grace: end it now
        await asyncio.gather(*(self.clients.end_conversation(s) for s in self.sessions.values()))
        deadline = asyncio.get_running_loop().time() + grace
        while any(s.call for s in self.sessions.values()):
            if asyncio.get_running_loop().time() > deadline:
                break
            await asyncio.sleep(0.05)
        for s in list(self.sessions.values()):
            if s.call is not None:
                await s.send(
                    error(
                        "shutting_down",
                        "the listener is stopping; fetch the result later with result_of",
                        id=s.call.id,
                        request_id=s.call.request_id,
                    )
                )
            s.writer.close()
        for t in [*self._tasks, *self.health.probes]:
            t.cancel()
        await self.health.leave()
        self.routing.close()
        await self.pool.close()
        shutil.rmtree(self._sockdir, ignore_errors=True)
        self.log.info("listener_stopped")
