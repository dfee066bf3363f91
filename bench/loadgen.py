"""A load generator for the listener that is not itself the bottleneck.

``python -m bench.loadgen --address HOST:PORT --token TOKEN [--sessions 64] [--procs 2]
[--seconds 60] [--window 5] [--transid ECHO]``

SESSIONS client sessions (docs/protocol.md: one call at a time per session) spread over
PROCS processes, each on uvloop with orjson and a bare frame reader: every session sends
a call, reads ``accepted`` then the ``result``, and sends the next. At the end no new
call is sent and the calls in flight are waited for, so every accepted call is answered
(or counted as lost). It prints, per WINDOW seconds: calls accepted and completed per
second and latency percentiles (send to result); then the totals and its own CPU
seconds per 1,000 requests (its processes only), so that a reader sees how much of the
machine the load itself took.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import resource
import struct
import sys
import time
from dataclasses import dataclass, field
from typing import Any

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


async def _read(reader: asyncio.StreamReader) -> dict[str, Any]:
    (n,) = _HEADER.unpack(await reader.readexactly(4))
    out: dict[str, Any] = orjson.loads(await reader.readexactly(n))
    return out


def _frame(message: dict[str, Any]) -> bytes:
    body = orjson.dumps(message)
    return _HEADER.pack(len(body)) + body


class LoadError(Exception):
    """The load could not be generated at all (no listener, a refused token...)."""


REPLY_TIMEOUT = 30.0  # a call unanswered this long counts as lost, and its session ends


async def _session(
    host: str,
    port: int,
    token: str,
    transid: str,
    t0: float,
    stop_at: float,
    out: dict[str, Any],
) -> None:
    def count(code: str) -> None:
        out["errors"][code] = out["errors"].get(code, 0) + 1

    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), 10)
    except (OSError, TimeoutError) as exc:
        raise LoadError(f"cannot connect to {host}:{port}: {exc}") from None
    try:
        writer.write(_frame({"type": "hello", "version": 1, "token": token}))
        try:
            welcome = await asyncio.wait_for(_read(reader), REPLY_TIMEOUT)
        except (OSError, TimeoutError, asyncio.IncompleteReadError, ValueError) as exc:
            raise LoadError(f"{host}:{port} is not a listener that answers: {exc!r}") from None
        if welcome.get("type") != "welcome":
            raise LoadError(f"the listener did not welcome the session: {welcome}")
        n = 0
        while time.perf_counter() < stop_at:
            n += 1
            sent = time.perf_counter()
            writer.write(_frame({"type": "call", "id": n, "transid": transid, "data": n}))
            try:
                reply = await asyncio.wait_for(_read(reader), REPLY_TIMEOUT)
                if reply.get("type") == "accepted":
                    out["accepted"] += 1
                    reply = await asyncio.wait_for(_read(reader), REPLY_TIMEOUT)
            except (OSError, TimeoutError, asyncio.IncompleteReadError) as exc:
                # the listener went away (or stopped answering): this call is lost
                count("connection_lost" if not isinstance(exc, TimeoutError) else "no_reply")
                return
            if reply.get("type") == "result":
                now = time.perf_counter()
                out["completed"] += 1
                out["samples"].append((now - t0, (now - sent) * 1000))
            else:
                count(str(reply.get("code", reply.get("type"))))
    finally:
        writer.close()


def _worker(args: tuple[str, int, str, str, int, float, float]) -> dict[str, Any]:
    host, port, token, transid, sessions, t0_wall, seconds = args
    out: dict[str, Any] = {"accepted": 0, "completed": 0, "errors": {}, "samples": []}

    async def main() -> float:
        # the processes agree on the wall-clock start; each measures on its own clock
        await asyncio.sleep(max(0.0, t0_wall - time.time()))
        t0 = time.perf_counter()
        stop_at = t0 + seconds
        await asyncio.gather(
            *(_session(host, port, token, transid, t0, stop_at, out) for _ in range(sessions))
        )
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
    jobs = [(host, int(port), token, transid, k, t0_wall, seconds) for k in shares]
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
