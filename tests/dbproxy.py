"""A TCP forwarder to the test's PostgreSQL: the database going away and coming back,
or answering late, as the processes under test see it."""

from __future__ import annotations

import socket
import threading
import time
from typing import Any

import psycopg

from .listeners import free_port


class Proxy:
    """A TCP forwarder to the test's PostgreSQL on a port of its own: ``stop()`` is the
    database going away (every connection cut, nothing listening), ``start()`` its
    return on the same port. ``delay`` (seconds, settable at any time) holds back what
    the server sends: a database whose answers come late."""

    def __init__(self, db_url: str) -> None:
        info = psycopg.conninfo.conninfo_to_dict(db_url)
        host, port = str(info.get("host") or "localhost"), int(info.get("port") or 5432)
        self.unix = host.startswith("/")
        self.target: Any = f"{host}/.s.PGSQL.{port}" if self.unix else (host, port)
        self.port = free_port()
        self.server: socket.socket | None = None
        self.conns: list[socket.socket] = []
        self.lock = threading.Lock()
        self.delay = 0.0

    def start(self) -> None:
        server = socket.socket()
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        server.bind(("127.0.0.1", self.port))
        server.listen(16)
        self.server = server
        threading.Thread(target=self._accept, args=(server,), daemon=True).start()

    def _accept(self, server: socket.socket) -> None:
        while True:
            try:
                client, _ = server.accept()
            except OSError:
                return
            try:
                if self.unix:
                    upstream = socket.socket(socket.AF_UNIX)
                    upstream.connect(self.target)
                else:
                    upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            with self.lock:  # a connection accepted as the proxy stops goes with it
                if self.server is not server:
                    for c in (client, upstream):
                        c.close()
                    return
                self.conns += [client, upstream]
            for a, b, late in ((client, upstream, False), (upstream, client, True)):
                threading.Thread(target=self._pump, args=(a, b, late), daemon=True).start()

    def _pump(self, a: socket.socket, b: socket.socket, late: bool) -> None:
        try:
            while data := a.recv(65536):
                until = time.monotonic() + self.delay
                while late and self.delay and time.monotonic() < until:
                    time.sleep(0.02)  # (held back until the delay ends or is set to 0)
                b.sendall(data)
        except OSError:
            pass
        for s in (a, b):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def stop(self) -> None:
        with self.lock:
            server, self.server = self.server, None
        if server is not None:
            try:
                server.shutdown(socket.SHUT_RDWR)  # wakes the thread in accept()
            except OSError:
                pass
            server.close()
        with self.lock:
            conns, self.conns = self.conns, []
        for s in conns:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()


def through(proxy: Proxy, db_url: str) -> str:
    params = psycopg.conninfo.conninfo_to_dict(db_url)
    params.update(host="127.0.0.1", port=str(proxy.port))
    return psycopg.conninfo.make_conninfo(**params)  # type: ignore[arg-type]
