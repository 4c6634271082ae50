"""Webhook ingest benchmark: creditsync's whole webhook path against two references.

    python bench/ingest.py --database-url postgresql+psycopg://postgres@127.0.0.1:5432/bench

Point it at a throwaway PostgreSQL database (it upgrades the schema, seeds instances and
creates a `bench_floor` table). It starts its own servers, each with `--workers` uvicorn
worker processes (default 1; the floor is measured with the same number as creditsync), one
at a time, and measures in one run, at concurrency 32 (keep-alive connections):

1. bare: a FastAPI endpoint that only answers 200;
2. floor: the durability floor, the simplest fast endpoint that inserts one ~500-byte row
   and commits (psycopg 3's AsyncConnectionPool on the event loop, no ORM);
3. verified: `creditsync api`'s webhook path (verify the RS256 JWT, store in the inbox,
   update the subscription, converge the instance, commit, answer), each request a
   distinct plan change of a provisioned instance;

then (3) again, open-loop at half its top rate, for latency (measured from each request's
scheduled time, so queueing counts); and, at the same rate, the time from a webhook's
arrival to its instance's converged credits: the webhook, then reads of the instance's row
by a separate database observer until it shows the new plan (a sample is also checked
through `GET /api/billing/credits`: `api_agrees`). It ends by printing one JSON line.

The load generator is a minimal HTTP/1.1 client on asyncio (pre-built requests, one
connection per worker), so it costs the server's 2-core machine as little as it can.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import datetime as dt
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request, Response

from creditsync import clock

HOST = "127.0.0.1"
PLANS = ("starter", "pro", "scale")


# -- the reference servers (run in their own processes: `ingest.py --serve bare|floor`) --


def bare_app() -> Any:
    app = FastAPI()

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.post("/bare")
    async def bare() -> Response:
        return Response(b'{"status":"ok"}', media_type="application/json")

    return app


FLOOR_TABLE = """
CREATE TABLE IF NOT EXISTS bench_floor (
    id bigserial PRIMARY KEY, received_at timestamptz NOT NULL DEFAULT now(), body text NOT NULL
)"""


def pooled_app(conninfo: str) -> tuple[FastAPI, Any]:
    """A FastAPI app with `/healthz` and psycopg's AsyncConnectionPool, opened for its
    lifetime: what every floor is built on (here and in `bench/consume.py`)."""
    from psycopg_pool import AsyncConnectionPool

    pool = AsyncConnectionPool(conninfo, min_size=8, max_size=16, open=False)

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI) -> Any:
        await pool.open(wait=True)
        yield
        await pool.close()

    app = FastAPI(lifespan=lifespan)

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    return app, pool


def floor_app(conninfo: str) -> Any:
    app, pool = pooled_app(conninfo)

    @app.post("/floor")
    async def floor(request: Request) -> Response:
        body = (await request.body()).decode()
        async with pool.connection() as conn:  # commits on exit
            await conn.execute("INSERT INTO bench_floor (body) VALUES (%s)", (body,))
        return Response(b'{"status":"stored"}', media_type="application/json")

    return app


FLOOR_CONNINFO = "BENCH_FLOOR_CONNINFO"


def bare_factory() -> Any:
    return bare_app()


def floor_factory() -> Any:
    return floor_app(os.environ[FLOOR_CONNINFO])


def serve(kind: str, port: int, conninfo: str | None, workers: int = 1) -> None:
    import uvicorn

    if workers > 1:  # worker processes import the app by name
        os.environ[FLOOR_CONNINFO] = conninfo or ""
        uvicorn.run(f"ingest:{kind}_factory", factory=True, workers=workers,
                    app_dir=str(Path(__file__).resolve().parent), host=HOST, port=port,
                    log_level="warning", access_log=False)
        return
    app = bare_app() if kind == "bare" else floor_app(conninfo or "")
    uvicorn.run(app, host=HOST, port=port, log_level="warning", access_log=False)


# -- the load generator ------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Job:
    """One request; for the converged phase, the instance and plan it must converge to."""

    request: bytes
    instance_id: str | None = None
    plan: str | None = None


@dataclasses.dataclass
class Result:
    latency_s: float
    status: int
    body: bytes
    ok: bool = True


def http_request(method: str, path: str, body: bytes = b"", headers: dict[str, str] | None = None,
                 content_type: str = "text/plain") -> bytes:
    head = [f"{method} {path} HTTP/1.1", f"Host: {HOST}", f"Content-Length: {len(body)}"]
    if body:
        head.append(f"Content-Type: {content_type}")
    head += [f"{k}: {v}" for k, v in (headers or {}).items()]
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


async def _exchange(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: bytes
) -> tuple[int, bytes]:
    writer.write(request)
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    status = int(lines[0].split(b" ", 2)[1])
    length = 0
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    return status, await reader.readexactly(length) if length else b""


async def _run(
    port: int, jobs: Sequence[Job], concurrency: int, rate: float | None,
    limit_s: float | None, observer: str | None,
) -> tuple[list[Result], float]:
    """Closed loop (rate None: each worker sends as soon as its last answer came back) or
    open loop at `rate` per second; latency from the scheduled start. Stops when the jobs
    run out or after `limit_s`."""
    queue: asyncio.Queue[tuple[int, Job]] = asyncio.Queue()
    for item in enumerate(jobs):
        queue.put_nowait(item)
    results: list[Result] = []
    loop = asyncio.get_running_loop()
    start = loop.time() + 0.05
    stop = float("inf") if limit_s is None else start + limit_s

    async def worker() -> None:
        reader, writer = await asyncio.open_connection(HOST, port)
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        watch = None
        if observer is not None:  # reads the database directly, as a separate observer
            import psycopg

            watch = await psycopg.AsyncConnection.connect(observer, autocommit=True)
        try:
            while True:
                try:
                    index, job = queue.get_nowait()
                except asyncio.QueueEmpty:
                    return
                if loop.time() >= stop:
                    return
                scheduled = loop.time() if rate is None else start + index / rate
                if rate is not None and scheduled > loop.time():
                    await asyncio.sleep(scheduled - loop.time())
                status, body = await _exchange(reader, writer, job.request)
                ok = status == 200
                if watch is not None and ok:
                    ok = await _converged(watch, job, loop.time() + 5)
                results.append(Result(loop.time() - scheduled, status, body, ok))
        finally:
            writer.close()
            if watch is not None:
                await watch.close()

    began = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return results, time.perf_counter() - began


async def _converged(watch: Any, job: Job, give_up: float) -> bool:
    """Poll the instance's row until it shows the plan (or `give_up`, loop time)."""
    loop = asyncio.get_running_loop()
    while loop.time() < give_up:
        cursor = await watch.execute("SELECT plan_id FROM instances WHERE instance_id = %s",
                                     (job.instance_id,))
        row = await cursor.fetchone()
        if row is not None and row[0] == job.plan:
            return True
        await asyncio.sleep(0.001)
    return False


def run_load(port: int, jobs: Sequence[Job], concurrency: int, rate: float | None = None,
             limit_s: float | None = None,
             observer: str | None = None) -> tuple[list[Result], float]:
    try:
        import uvloop
        runner = uvloop.run
    except ImportError:  # pragma: no cover
        runner = asyncio.run
    return runner(_run(port, jobs, concurrency, rate, limit_s, observer))


def pct(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(int(q * len(ordered)), len(ordered) - 1)] * 1000


# -- servers ---------------------------------------------------------------------------


def free_port() -> int:
    with contextlib.closing(socket.socket()) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def server(command: list[str], port: int, env: dict[str, str]) -> Iterator[subprocess.Popen[bytes]]:
    log = tempfile.TemporaryFile()  # noqa: SIM115 (closed in the finally below)
    process = subprocess.Popen(command, env=env, stdout=log, stderr=log, start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while True:
            if process.poll() is not None:
                log.seek(0)
                raise RuntimeError(f"{command} exited: {log.read().decode()[-3000:]}")
            with contextlib.suppress(OSError), socket.create_connection((HOST, port), 0.5) as s:
                s.sendall(http_request("GET", "/healthz"))
                if s.recv(64).startswith(b"HTTP/1.1 200"):
                    break
            if time.monotonic() > deadline:
                raise RuntimeError(f"{command} did not become ready")
            time.sleep(0.1)
        yield process
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        log.close()


# -- the creditsync workload -------------------------------------------------------------


@dataclasses.dataclass
class Workload:
    """Distinct plan changes of provisioned instances, signed as the marketplace would."""

    private_pem: str
    app_secret: str
    prefix: str
    instances: int
    base: dt.datetime
    next_event: int = 0

    def events(self, count: int) -> list[tuple[str, str, str]]:
        """(instance id, plan, body) for the next `count` events, signed in 2 processes."""
        specs = []
        for _ in range(count):
            n = self.next_event
            self.next_event += 1
            instance = f"{self.prefix}{n % self.instances + 1:07d}"
            plan = PLANS[(n // self.instances + n) % len(PLANS)]
            specs.append((instance, plan, (self.base + dt.timedelta(milliseconds=n)).isoformat()))
        with ProcessPoolExecutor(2) as pool:
            chunk = max(len(specs) // 8, 1)
            bodies = list(pool.map(_sign, [(self.private_pem, *s) for s in specs],
                                   chunksize=chunk))
        return [(i, p, b) for (i, p, _), b in zip(specs, bodies, strict=True)]


def _sign(spec: tuple[str, str, str, str]) -> str:
    from cryptography.hazmat.primitives import serialization

    from creditsync_api import wix

    pem, instance, plan, at = spec
    key = _key_cache.get(pem)
    if key is None:
        key = _key_cache[pem] = serialization.load_pem_private_key(pem.encode(), None)
    fields = wix.event_fields("PaidPlanChanged", product=plan, at=dt.datetime.fromisoformat(at),
                              invoice_id=f"inv-{instance}-{at}")
    return wix.sign_event(key, "PaidPlanChanged", instance, fields,
                          now=dt.datetime.now(dt.UTC), ttl=dt.timedelta(hours=1))


_key_cache: dict[str, Any] = {}


def _api_agrees(port: int, workload: Workload, sample: list[tuple[str, str, str]]) -> bool:
    """`GET /api/billing/credits` shows each sampled instance on the plan it was moved to
    (the last event per instance in the sample wins)."""
    from creditsync_api import tokens

    expected = {instance: plan for instance, plan, _ in sample}
    now = dt.datetime.now(dt.UTC)
    for instance, plan in expected.items():
        token = tokens.sign(workload.app_secret, instance, now=now)
        with socket.create_connection((HOST, port)) as conn:
            conn.sendall(http_request("GET", "/api/billing/credits",
                                      headers={"Authorization": f"Bearer {token}",
                                               "Connection": "close"}))
            answer = b""
            while chunk := conn.recv(65536):
                answer += chunk
        if f'"plan":"{plan}"'.encode() not in answer:
            return False
    return True


def prepare_database(url: str, instances: int, prefix: str) -> None:
    import sqlalchemy as sa

    from creditsync import catalog, seed
    from creditsync.storage import database, schema

    engine = database.create(url)
    try:
        schema.upgrade(engine)
        with database.write(engine) as conn:
            catalog.seed(conn, None, clock.utcnow())
            conn.execute(sa.text(FLOOR_TABLE))
        seed.seed(engine, instances, 0, now=clock.utcnow() - dt.timedelta(days=1),
                  prefix=prefix)
    finally:
        engine.dispose()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--database-url", required=False,
                        default=os.environ.get("CREDITSYNC_DATABASE_URL"),
                        help="A throwaway PostgreSQL database (postgresql+psycopg://...).")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--duration", type=float, default=4.0,
                        help="Seconds per throughput phase (default 4).")
    parser.add_argument("--workers", type=int, default=1,
                        help="Worker processes of every server measured (default 1).")
    parser.add_argument("--serve", choices=("bare", "floor"), help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve:
        serve(args.serve, args.port, args.database_url, args.workers)
        return 0
    url: str | None = args.database_url
    if not url or not url.startswith("postgresql"):
        parser.error("--database-url must be a PostgreSQL URL (postgresql+psycopg://...)")
    return measure(url, args.concurrency, args.duration, args.workers)


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def measure(url: str, concurrency: int, duration: float, workers: int = 1) -> int:
    from creditsync_api import devkeys

    conninfo = url.replace("postgresql+psycopg://", "postgresql://", 1)
    prefix = f"bench-{uuid.uuid4().hex[:6]}-"
    instances = 50_000
    _say(f"preparing the database ({instances:,} instances)...")
    prepare_database(url, instances, prefix)
    key = devkeys.generate_private_key()
    workload = Workload(devkeys.private_pem(key), "bench-secret-" + uuid.uuid4().hex, prefix,
                        instances, dt.datetime.now(dt.UTC))
    env = {**os.environ, "CREDITSYNC_DATABASE_URL": url,
           "CREDITSYNC_WIX_PUBLIC_KEY": devkeys.public_pem(key),
           "CREDITSYNC_APP_SECRET": workload.app_secret,
           "CREDITSYNC_ADMIN_TOKEN": "bench-admin-" + uuid.uuid4().hex}
    me = [sys.executable, str(Path(__file__).resolve())]
    out: dict[str, Any] = {"concurrency": concurrency, "workers": workers}
    each = ["--workers", str(workers)]

    def throughput(name: str, port: int, jobs: list[Job]) -> float:
        run_load(port, jobs[:300], concurrency)  # warm-up
        results, elapsed = run_load(port, jobs[300:], concurrency, limit_s=duration)
        bad = sum(1 for r in results if not r.ok)
        rps = len(results) / elapsed
        _say(f"{name}: {rps:,.0f}/s over {len(results):,} requests "
             f"(p50 {pct([r.latency_s for r in results], .5):.1f} ms, "
             f"p99 {pct([r.latency_s for r in results], .99):.1f} ms, {bad} not 200)")
        if bad:
            out[f"{name}_errors"] = bad
        return rps

    port = free_port()
    with server([*me, "--serve", "bare", "--port", str(port), *each], port, env):
        bare = http_request("POST", "/bare", b"x" * 500)
        out["bare_rps"] = round(throughput("bare", port, [Job(bare)] * int(20_000 * duration)))
    port = free_port()
    with server([*me, "--serve", "floor", "--port", str(port), "--database-url", conninfo,
                 *each], port, env):
        row = json.dumps({"event": "x" * 470}).encode()
        floor = http_request("POST", "/floor", row, content_type="application/json")
        out["floor_rps"] = round(throughput("floor", port, [Job(floor)] * int(8000 * duration)))

    _say("signing webhooks...")
    signed = workload.events(300 + int(max(out["floor_rps"], 500) * duration))
    port = free_port()
    command = [sys.executable, "-m", "creditsync.cli.main", "--log-json", "api", "--port",
               str(port), *each]
    with server(command, port, env):
        jobs = [Job(http_request("POST", "/api/webhooks/billing", body.encode()))
                for _, _, body in signed]
        verified = throughput("verified", port, jobs)
        out["verified_rps"] = round(verified)
        out["verified_vs_floor"] = round(verified / out["floor_rps"], 3)
        half = verified / 2
        count = int(half * duration)
        _say(f"signing {2 * count:,} more webhooks for the half-rate phases ({half:,.0f}/s)...")
        more = workload.events(2 * count)
        latency_jobs = [Job(http_request("POST", "/api/webhooks/billing", body.encode()))
                        for _, _, body in more[:count]]
        results, _ = run_load(port, latency_jobs, concurrency, rate=half)
        lat = [r.latency_s for r in results]
        statuses = Counter(json.loads(r.body).get("status", r.status) for r in results)
        out["half_rate_rps"] = round(half)
        out["verified_p50_ms"] = round(pct(lat, .5), 2)
        out["verified_p99_ms"] = round(pct(lat, .99), 2)
        _say(f"verified at {half:,.0f}/s: p50 {out['verified_p50_ms']} ms, "
             f"p99 {out['verified_p99_ms']} ms, outcomes {dict(statuses)}")
        converged_jobs = [
            Job(http_request("POST", "/api/webhooks/billing", body.encode()), instance, plan)
            for instance, plan, body in more[count:]]
        results, _ = run_load(port, converged_jobs, concurrency, rate=half, observer=conninfo)
        done = [r.latency_s for r in results if r.ok]
        out["converged_p50_ms"] = round(pct(done, .5), 2)
        out["converged_p99_ms"] = round(pct(done, .99), 2)
        out["converged_not_seen"] = len(results) - len(done)
        _say(f"webhook → converged credits at {half:,.0f}/s: p50 {out['converged_p50_ms']} ms, "
             f"p99 {out['converged_p99_ms']} ms ({out['converged_not_seen']} not converged)")
        out["api_agrees"] = _api_agrees(port, workload, more[count:][:20])
    out["targets_met"] = {
        "verified_at_least_40pct_of_floor": out["verified_vs_floor"] >= 0.4,
        "verified_p99_under_50ms": out["verified_p99_ms"] < 50,
        "converged_p99_under_50ms": out["converged_p99_ms"] < 50,
    }
    print(json.dumps(out), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
