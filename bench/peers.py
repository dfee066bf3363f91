"""The peers, pgqueuer (asyncpg) and procrastinate (psycopg), when installed
(pip install -e '.[bench]'): enqueue, drain and enqueue-to-completion latency."""

from __future__ import annotations

import asyncio
import importlib.util
import statistics
import time
from typing import Any

from .report import Report
from .server import Server


def run(server: Server, report: Report, size: dict[str, Any], workers: int) -> None:
    for name, fn in (("pgqueuer", _pgqueuer), ("procrastinate", _procrastinate)):
        if importlib.util.find_spec(name) is None:
            report.notes.append(f"{name}: skipped (not installed: pip install -e '.[bench]')")
            print(f"  {name}: skipped, not installed", flush=True)
            continue
        try:
            fn(server, report, size, workers)
        except Exception as exc:  # a peer's failure must not lose our figures
            report.notes.append(f"{name}: failed: {type(exc).__name__}: {exc}")
            print(f"  {name}: failed: {exc}", flush=True)


def _pgqueuer(server: Server, report: Report, size: dict[str, Any], workers: int) -> None:
    import asyncpg
    from pgqueuer.adapters.drivers.asyncpg import AsyncpgDriver
    from pgqueuer.core.qm import QueueManager
    from pgqueuer.domain.types import QueueExecutionMode
    from pgqueuer.queries import Queries

    url = server.database("bench_pgqueuer")

    async def main() -> None:
        conn = await asyncpg.connect(url)
        q = Queries(AsyncpgDriver(conn))
        await q.install()
        n = size["enqueue"]
        t0 = time.perf_counter()
        for _ in range(n):
            await q.enqueue("job", b"x")
        report.add(
            "enqueue",
            "pgqueuer",
            "one by one",
            n / (time.perf_counter() - t0),
            "req/s",
            baseline="raw/one by one",
        )
        n = size["drain"]
        t0 = time.perf_counter()
        for start in range(0, n, 1000):
            k = min(1000, n - start)
            await q.enqueue(["job"] * k, [b"x"] * k, [0] * k)
        report.add(
            "enqueue",
            "pgqueuer",
            "bulk",
            n / (time.perf_counter() - t0),
            "req/s",
            baseline="raw/bulk unnest",
        )

        async def worker() -> None:
            c = await asyncpg.connect(url)
            qm = QueueManager(Queries(AsyncpgDriver(c)))

            @qm.entrypoint("job")
            async def job(_: Any) -> None:
                return None

            await qm.run(mode=QueueExecutionMode.drain, batch_size=10)
            await c.close()

        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(workers)))
        report.add(
            "drain",
            "pgqueuer",
            f"{workers} workers",
            n / (time.perf_counter() - t0),
            "jobs/s",
            baseline="raw/one round trip",
        )
        await conn.close()

    asyncio.run(main())


def _procrastinate(server: Server, report: Report, size: dict[str, Any], workers: int) -> None:
    import procrastinate

    url = server.database("bench_procrastinate")
    app = procrastinate.App(connector=procrastinate.PsycopgConnector(conninfo=url))

    @app.task(name="job", queue="bench")
    async def job() -> None:
        return None

    async def main() -> None:
        async with app.open_async():
            await app.schema_manager.apply_schema_async()
            n = size["enqueue"] // 2
            t0 = time.perf_counter()
            for _ in range(n):
                await job.defer_async()
            report.add(
                "enqueue",
                "procrastinate",
                "one by one",
                n / (time.perf_counter() - t0),
                "req/s",
                baseline="raw/one by one",
            )
            n = size["drain"] // 2
            t0 = time.perf_counter()
            for start in range(0, n, 1000):
                await job.batch_defer_async(*({} for _ in range(min(1000, n - start))))
            report.add(
                "enqueue",
                "procrastinate",
                "bulk",
                n / (time.perf_counter() - t0),
                "req/s",
                baseline="raw/bulk unnest",
            )
            total = n + size["enqueue"] // 2
            t0 = time.perf_counter()
            await app.run_worker_async(
                queues=["bench"], concurrency=workers, wait=False, install_signal_handlers=False
            )
            report.add(
                "drain",
                "procrastinate",
                f"concurrency {workers}",
                total / (time.perf_counter() - t0),
                "jobs/s",
                baseline="raw/one round trip",
            )
            # enqueue to completion visible, one at a time, worker running
            worker = asyncio.create_task(
                app.run_worker_async(
                    queues=["bench"],
                    concurrency=1,
                    wait=True,
                    install_signal_handlers=False,
                    fetch_job_polling_interval=5.0,
                )
            )
            await asyncio.sleep(0.5)
            lat = []
            async with app.connector.pool.connection() as conn:  # type: ignore[attr-defined]
                for _ in range(50):
                    t0 = time.perf_counter()
                    jid = await job.defer_async()
                    while True:
                        cur = await conn.execute(
                            "SELECT status FROM procrastinate_jobs WHERE id = %s", [jid]
                        )
                        row = await cur.fetchone()
                        if row and row[0] == "succeeded":
                            break
                        await asyncio.sleep(0.0005)
                    lat.append((time.perf_counter() - t0) * 1000)
            worker.cancel()
            report.add(
                "roundtrip",
                "procrastinate",
                "enqueue->done p50",
                statistics.median(lat),
                "ms",
                higher_is_better=False,
            )

    asyncio.run(main())
