"""A load generator for the listener that is not itself the bottleneck.

``python -m bench.loadgen --address HOST:PORT --token TOKEN [--sessions 64] [--procs 2]
[--seconds 60] [--window 5] [--transid ECHO] [--accepted-frames]``

SESSIONS client sessions (docs/protocol.md: one call at a time per session) spread over
PROCS processes, each on uvloop with orjson and a bare protocol (frames parsed as they
arrive: no stream reader, no task or timer per read; one watchdog per process ends a
session whose call is unanswered for 30 s): every session sends a call, reads its
reply, and sends the next. Its hello asks for no ``accepted`` frame (``"accepted":
false``: the result is a call's only reply, as a client that only waits for outcomes
would ask); ``--accepted-frames`` reads ``accepted`` then the result, and a listener
that does not know the option sends ``accepted`` anyway (read and counted). At the end
no new call is sent and the calls in flight are waited for, so every accepted call is
answered (or counted as lost). It prints, per WINDOW seconds: calls completed per
second and latency percentiles (send to result); then the totals and its own CPU
seconds per 1,000 requests (its processes only), so that a reader sees how much of the
machine the load itself took.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import multiprocessing
import os
import resource
import struct
import sys
import time
from dataclasses import dataclass, field
from typing import Any, cast

import orjson

from dispatcher.eventloop import run

__all__ = ["Load", "LoadError", "generate", "main"]

_HEADER = struct.Struct(">I")


@dataclass
class Load:
    """What a run of the load generator measured."""

    seconds: float  # from the first call to the last result
    accepted: int
    completed: int
    errors: dict[str, int]
    # (seconds since the start when the result came, latency in ms) of each completed call
    samples: list[tuple[float, float]] = field(repr=False)
    cpu_s: float  # CPU seconds of the generator's own processes

    @property
    def rate(self) -> float:
        return self.completed / self.seconds if self.seconds else 0.0

    def latencies(self) -> list[float]:
        return [ms for _, ms in self.samples]

    def cpu_per_1000(self) -> float:
        return self.cpu_s / self.completed * 1000 if self.completed else float("nan")

    def windows(self, width: float) -> list[tuple[float, int, float, float]]:
        """(window start s, completed, p50 ms, p99 ms) per WIDTH seconds."""
        out = []
        n = int(self.seconds // width) + 1
        buckets: list[list[float]] = [[] for _ in range(n)]
        for at, ms in self.samples:
            buckets[min(n - 1, int(at // width))].append(ms)
        for i, b in enumerate(buckets):
            if b:
                out.append((i * width, len(b), pct(b, 0.5), pct(b, 0.99)))
        return out


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))]


class _Link(asyncio.Protocol):
    """One session's connection: frames parsed as they arrive (no stream reader, no
    task or timer per read: the generator must cost little per call)."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.frames: collections.deque[dict[str, Any]] = collections.deque()
        self.waiter: asyncio.Future[None] | None = None
        self.lost: BaseException | None = None
        self.since: float | None = None  # when the call in flight was sent

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # (uvloop's is not a subclass)

    def data_received(self, data: bytes) -> None:
        buf = self.buf
        buf += data
        while len(buf) >= 4:
            (n,) = _HEADER.unpack_from(buf)
            if len(buf) < 4 + n:
                break
            self.frames.append(orjson.loads(bytes(buf[4 : 4 + n])))
            del buf[: 4 + n]
        if self.frames:
            self._wake(None)

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = exc or ConnectionResetError("the listener closed the connection")
        self._wake(self.lost)

    def _wake(self, exc: BaseException | None) -> None:
        w = self.waiter
        if w is not None and not w.done():
            if exc is None:
                w.set_result(None)
            else:
                w.set_exception(exc)

    def send(self, message: dict[str, Any]) -> None:
        assert self.transport is not None
        self.transport.write(_frame(message))

    async def read(self) -> dict[str, Any]:
        while not self.frames:
            if self.lost is not None:
                raise self.lost
            self.waiter = asyncio.get_running_loop().create_future()
            await self.waiter
        return self.frames.popleft()


def _frame(message: dict[str, Any]) -> bytes:
    body = orjson.dumps(message)
    return _HEADER.pack(len(body)) + body


class LoadError(Exception):
    """The load could not be generated at all (no listener, a refused token...)."""


REPLY_TIMEOUT = 30.0  # a call unanswered this long counts as lost, and its session ends


async def _watch(links: list[_Link], done: asyncio.Event) -> None:
    """Once a second: a call unanswered for REPLY_TIMEOUT ends its session (TimeoutError)."""
    while not done.is_set():
        await asyncio.sleep(1.0)
        now = time.perf_counter()
        for link in links:
            if link.since is not None and now - link.since > REPLY_TIMEOUT:
                link._wake(TimeoutError(f"no reply in {REPLY_TIMEOUT} s"))


async def _session(
    host: str,
    port: int,
    token: str,
    transid: str,
    t0: float,
    stop_at: float,
    out: dict[str, Any],
    links: list[_Link],
    accepted_frames: bool,
) -> None:
    def count(code: str) -> None:
        out["errors"][code] = out["errors"].get(code, 0) + 1

    loop = asyncio.get_running_loop()
    try:
        transport, link = await asyncio.wait_for(loop.create_connection(_Link, host, port), 10)
    except (OSError, TimeoutError) as exc:
        raise LoadError(f"cannot connect to {host}:{port}: {exc}") from None
    links.append(link)
    try:
        hello: dict[str, Any] = {"type": "hello", "version": 1, "token": token}
        if not accepted_frames:
            hello["accepted"] = False
        link.send(hello)
        link.since = time.perf_counter()
        try:
            welcome = await link.read()
        except (OSError, TimeoutError, ValueError) as exc:
            raise LoadError(f"{host}:{port} is not a listener that answers: {exc!r}") from None
        if welcome.get("type") != "welcome":
            raise LoadError(f"the listener did not welcome the session: {welcome}")
        n = 0
        while time.perf_counter() < stop_at:
            n += 1
            sent = link.since = time.perf_counter()
            link.send({"type": "call", "id": n, "transid": transid, "data": n})
            try:
                reply = await link.read()
                if reply.get("type") == "accepted":
                    out["accepted"] += 1
                    reply = await link.read()
                elif reply.get("type") == "result":
                    out["accepted"] += 1  # (no accepted frame asked for: the result says it)
            except (OSError, TimeoutError) as exc:
                # the listener went away (or stopped answering): this call is lost
                count("connection_lost" if not isinstance(exc, TimeoutError) else "no_reply")
                return
            link.since = None
            if reply.get("type") == "result":
                now = time.perf_counter()
                out["completed"] += 1
                out["samples"].append((now - t0, (now - sent) * 1000))
            else:
                count(str(reply.get("code", reply.get("type"))))
    finally:
        transport.close()


def _worker(args: tuple[str, int, str, str, int, float, float, bool]) -> dict[str, Any]:
    host, port, token, transid, sessions, t0_wall, seconds, accepted_frames = args
    out: dict[str, Any] = {"accepted": 0, "completed": 0, "errors": {}, "samples": []}

    async def main() -> float:
        # the processes agree on the wall-clock start; each measures on its own clock
        await asyncio.sleep(max(0.0, t0_wall - time.time()))
        t0 = time.perf_counter()
        stop_at = t0 + seconds
        links: list[_Link] = []
        done = asyncio.Event()
        watch = asyncio.create_task(_watch(links, done))
        try:
            await asyncio.gather(
                *(
                    _session(host, port, token, transid, t0, stop_at, out, links, accepted_frames)
                    for _ in range(sessions)
                )
            )
        finally:
            done.set()
            watch.cancel()
        return time.perf_counter() - t0

    try:
        out["seconds"] = run(main())
    except LoadError as exc:
        out["fatal"] = str(exc)
        out["seconds"] = 0.0
    usage = resource.getrusage(resource.RUSAGE_SELF)
    out["cpu_s"] = usage.ru_utime + usage.ru_stime
    return out


def generate(
    address: str,
    token: str,
    *,
    sessions: int = 64,
    procs: int = 2,
    seconds: float = 60.0,
    transid: str = "ECHO",
    accepted_frames: bool = False,
) -> Load:
    """Run the load (see the module doc) and say what it measured."""
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise LoadError(f"--address must be HOST:PORT, not {address!r}")
    if sessions < 1 or procs < 1 or not seconds > 0:
        raise LoadError("--sessions and --procs must be at least 1, --seconds more than 0")
    procs = max(1, min(procs, sessions))
    shares = [sessions // procs + (1 if i < sessions % procs else 0) for i in range(procs)]
    t0_wall = time.time() + 1.0  # time for the processes to start
    jobs = [(host, int(port), token, transid, k, t0_wall, seconds, accepted_frames) for k in shares]
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(procs) as pool:
        parts = pool.map(_worker, jobs)
    fatal = [p["fatal"] for p in parts if "fatal" in p]
    if fatal:
        raise LoadError(fatal[0])
    errors: dict[str, int] = {}
    for p in parts:
        for k, v in p["errors"].items():
            errors[k] = errors.get(k, 0) + v
    return Load(
        seconds=max(p["seconds"] for p in parts),
        accepted=sum(p["accepted"] for p in parts),
        completed=sum(p["completed"] for p in parts),
        errors=errors,
        samples=sorted(s for p in parts for s in p["samples"]),
        cpu_s=sum(p["cpu_s"] for p in parts),
    )


def report(load: Load, window: float) -> str:
    lines = [f"{'window':>9} {'done/s':>8} {'p50 ms':>8} {'p99 ms':>8}"]
    for start, n, p50, p99 in load.windows(window):
        span = min(window, load.seconds - start)
        if span < window / 2:
            continue  # the last moments of the run (in the total): too short for a rate
        lines.append(f"{start:7.0f} s {n / span:8.0f} {p50:8.1f} {p99:8.1f}")
    lat = load.latencies()
    lines.append(
        f"total: {load.completed} completed of {load.accepted} accepted in {load.seconds:.1f} s"
        f" = {load.rate:.0f} req/s; p50 {pct(lat, 0.5):.1f} ms, p99 {pct(lat, 0.99):.1f} ms;"
        f" errors {load.errors or 'none'}"
    )
    lines.append(
        f"load generator CPU: {load.cpu_per_1000():.3f} s per 1,000 requests "
        f"({load.cpu_s:.1f} s in {load.seconds:.0f} s on {os.cpu_count()} cores)"
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.loadgen", description=__doc__)
    parser.add_argument("--address", required=True, help="the listener, HOST:PORT")
    parser.add_argument("--token", default=os.environ.get("DISPATCHER_TOKEN"), required=False)
    parser.add_argument("--sessions", type=int, default=64)
    parser.add_argument("--procs", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--window", type=float, default=5.0)
    parser.add_argument("--transid", default="ECHO")
    parser.add_argument("--json", action="store_true", help="the totals as JSON on stdout")
    parser.add_argument(
        "--accepted-frames",
        action="store_true",
        help="ask for the accepted frame of each call (the hello's accepted: true; "
        "by default the generator asks the listener to leave it out)",
    )
    args = parser.parse_args(argv)
    if not args.token:
        parser.error("--token (or DISPATCHER_TOKEN) is required")
    if not args.window > 0:
        parser.error("--window must be more than 0")
    try:
        load = generate(
            args.address,
            args.token,
            sessions=args.sessions,
            procs=args.procs,
            seconds=args.seconds,
            transid=args.transid,
            accepted_frames=args.accepted_frames,
        )
    except LoadError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(1)
    print(report(load, args.window), file=sys.stderr if args.json else sys.stdout)
    if args.json:
        lat = load.latencies()
        print(
            json.dumps(
                {
                    "completed": load.completed,
                    "accepted": load.accepted,
                    "seconds": load.seconds,
                    "rate": load.rate,
                    "p50_ms": pct(lat, 0.5),
                    "p99_ms": pct(lat, 0.99),
                    "errors": load.errors,
                    "cpu_per_1000_s": load.cpu_per_1000(),
                }
            )
        )


if __name__ == "__main__":
    main()
