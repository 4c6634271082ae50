"""Consume benchmark: creditsync's app-backend spend path against two references.

    python bench/consume.py --database-url postgresql+psycopg://postgres@127.0.0.1:5432/bench

Point it at a throwaway PostgreSQL database (it upgrades the schema and seeds instances).
It starts its own servers, one uvicorn worker each, one at a time, and measures in one run,
at concurrency 32 (keep-alive connections, the load generator of `bench/ingest.py`):

1. bare: a FastAPI endpoint that only answers 200;
2. floor: the simplest endpoint doing the same atomic work in ONE statement with psycopg's
   AsyncConnectionPool: check and decrement the balance, insert the ledger row and the
   idempotency row, commit (the same tables creditsync writes);
3. consume: `creditsync api`'s `POST /api/instances/{id}/consume` with a service key
   (key lookup, instance lock, idempotency check, balance check, update, ledger row,
   idempotency row, commit), each request a distinct key;
4. reserve + commit: `POST /api/instances/{id}/reservations` then
   `POST /api/reservations/{id}/commit`, pairs per second;

then (3) again, open-loop at half its top rate, for latency (from each request's scheduled
time, so queueing counts). It ends by printing one JSON line: `bare_rps`, `floor_rps`,
`consume_rps`, `consume_p50_ms`, `consume_p99_ms`, `reserve_commit_rps` and the ratios.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import sys
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from fastapi import Request, Response

sys.path.insert(0, str(Path(__file__).resolve().parent))
import ingest  # the sibling benchmark's servers and load generator
from creditsync import clock

HOST = ingest.HOST
INSTANCES = 20_000

# One statement: the balance check and decrement, the ledger row, the idempotency row.
FLOOR_SQL = """
WITH spent AS (
    UPDATE instances SET credits_used_month = credits_used_month + %(amount)s,
                         version = version + 1, updated_at = now()
    WHERE instance_id = %(instance)s
      AND greatest(credits_total - credits_used_month, 0) + bonus_credits - credits_held
          >= %(amount)s
    RETURNING instance_id, plan_id, credits_total, credits_used_month, bonus_credits
), entry AS (
    INSERT INTO ledger (instance_id, at, kind, actor, correlation_id, plan_before, plan_after,
                        credits_total_before, credits_total_after, credits_used_before,
                        credits_used_after, bonus_before, bonus_after)
    SELECT instance_id, now(), 'usage', 'app', %(key)s, plan_id, plan_id, credits_total,
           credits_total, credits_used_month - %(amount)s, credits_used_month, bonus_credits,
           bonus_credits FROM spent
)
INSERT INTO usage_requests (instance_id, idempotency_key, amount, from_plan, from_bonus,
                            remaining_after, created_at)
SELECT instance_id, %(key)s, %(amount)s, %(amount)s, 0,
       credits_total - credits_used_month + bonus_credits, now() FROM spent
RETURNING remaining_after
"""


def floor_app(conninfo: str) -> Any:
    app, pool = ingest.pooled_app(conninfo)

    @app.post("/floor/{instance_id}")
    async def floor(instance_id: str, request: Request) -> Response:
        body = json.loads(await request.body())
        async with pool.connection() as conn:  # commits on exit
            cursor = await conn.execute(FLOOR_SQL, {"instance": instance_id,
                                                    "amount": body["amount"],
                                                    "key": body["idempotencyKey"]})
            row = await cursor.fetchone()
        if row is None:
            return Response(b'{"error":"insufficient_credits"}', status_code=402,
                            media_type="application/json")
        return Response(json.dumps({"creditsRemaining": row[0]}).encode(),
                        media_type="application/json")

    return app


def serve(kind: str, port: int, conninfo: str | None) -> None:
    import uvicorn

    app = ingest.bare_app() if kind == "bare" else floor_app(conninfo or "")
    uvicorn.run(app, host=HOST, port=port, log_level="warning", access_log=False)


# -- the workload ------------------------------------------------------------------------


def _consume_body(key: str) -> bytes:
    return json.dumps({"amount": 1, "idempotencyKey": key}).encode()


def consume_jobs(path: str, prefix: str, count: int, auth: dict[str, str]) -> list[ingest.Job]:
    run = uuid.uuid4().hex[:6]
    return [ingest.Job(ingest.http_request(
        "POST", path.format(f"{prefix}{n % INSTANCES + 1:07d}"), _consume_body(f"{run}-{n}"),
        headers=auth, content_type="application/json")) for n in range(count)]


async def _pairs(port: int, prefix: str, auth: dict[str, str], concurrency: int,
                 limit_s: float, first: int) -> tuple[int, int, float]:
    """Reserve then commit, as fast as the answers come; (pairs done, failures, seconds)."""
    loop = asyncio.get_running_loop()
    counter = iter(range(first, first + 10_000_000))
    done = failed = 0
    stop = loop.time() + limit_s

    async def worker() -> None:
        nonlocal done, failed
        reader, writer = await asyncio.open_connection(HOST, port)
        writer.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            while loop.time() < stop:
                n = next(counter)
                instance = f"{prefix}{n % INSTANCES + 1:07d}"
                status, body = await ingest._exchange(reader, writer, ingest.http_request(
                    "POST", f"/api/instances/{instance}/reservations",
                    _consume_body(f"pair-{n}"), headers=auth,
                    content_type="application/json"))
                if status != 200:
                    failed += 1
                    continue
                reservation = json.loads(body)["reservationId"]
                status, _ = await ingest._exchange(reader, writer, ingest.http_request(
                    "POST", f"/api/reservations/{reservation}/commit", b"{}", headers=auth,
                    content_type="application/json"))
                if status == 200:
                    done += 1
                else:
                    failed += 1
        finally:
            writer.close()

    began = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return done, failed, time.perf_counter() - began


def prepare_database(url: str, prefix: str) -> str:
    """The schema, the catalog, `INSTANCES` instances (each phase spends 1 credit per
    request, spread over all of them: even the free plan's 100 are enough); a service key."""
    from creditsync import catalog, keys, seed
    from creditsync.storage import database, schema

    engine = database.create(url)
    try:
        schema.upgrade(engine)
        with database.write(engine) as conn:
            catalog.seed(conn, None, clock.utcnow())
        seed.seed(engine, INSTANCES, 0, now=clock.utcnow(), prefix=prefix)
        return keys.create(engine, "bench", ["credits:read", "credits:consume"],
                           now=clock.utcnow()).key
    finally:
        engine.dispose()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--database-url", default=os.environ.get("CREDITSYNC_DATABASE_URL"),
                        help="A throwaway PostgreSQL database (postgresql+psycopg://...).")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--duration", type=float, default=4.0,
                        help="Seconds per phase (default 4).")
    parser.add_argument("--serve", choices=("bare", "floor"), help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve:
        serve(args.serve, args.port, args.database_url)
        return 0
    url: str | None = args.database_url
    if not url or not url.startswith("postgresql"):
        parser.error("--database-url must be a PostgreSQL URL (postgresql+psycopg://...)")
    return measure(url, args.concurrency, args.duration)


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def measure(url: str, concurrency: int, duration: float) -> int:
    from creditsync_api import devkeys

    conninfo = url.replace("postgresql+psycopg://", "postgresql://", 1)
    prefix = f"bench-{uuid.uuid4().hex[:6]}-"
    _say(f"preparing the database ({INSTANCES:,} instances)...")
    service_key = prepare_database(url, prefix)
    auth = {"Authorization": f"Bearer {service_key}"}
    key = devkeys.generate_private_key()
    env = {**os.environ, "CREDITSYNC_DATABASE_URL": url,
           "CREDITSYNC_WIX_PUBLIC_KEY": devkeys.public_pem(key),
           "CREDITSYNC_APP_SECRET": "bench-secret-" + uuid.uuid4().hex,
           "CREDITSYNC_ADMIN_TOKEN": "bench-admin-" + uuid.uuid4().hex}
    me = [sys.executable, str(Path(__file__).resolve())]
    out: dict[str, Any] = {"concurrency": concurrency}

    def throughput(name: str, port: int, jobs: list[ingest.Job]) -> float:
        ingest.run_load(port, jobs[:300], concurrency)  # warm-up
        results, elapsed = ingest.run_load(port, jobs[300:], concurrency, limit_s=duration)
        bad = sum(1 for r in results if not r.ok)
        rps = len(results) / elapsed
        _say(f"{name}: {rps:,.0f}/s over {len(results):,} requests "
             f"(p50 {ingest.pct([r.latency_s for r in results], .5):.1f} ms, "
             f"p99 {ingest.pct([r.latency_s for r in results], .99):.1f} ms, {bad} not 200)")
        if bad:
            out[f"{name}_errors"] = bad
        return rps

    port = ingest.free_port()
    with ingest.server([*me, "--serve", "bare", "--port", str(port)], port, env):
        bare = ingest.http_request("POST", "/bare", _consume_body("x"))
        out["bare_rps"] = round(throughput("bare", port,
                                           [ingest.Job(bare)] * int(20_000 * duration)))
    port = ingest.free_port()
    with ingest.server([*me, "--serve", "floor", "--port", str(port), "--database-url",
                        conninfo], port, env):
        jobs = consume_jobs("/floor/{}", prefix, int(8000 * duration), {})
        out["floor_rps"] = round(throughput("floor", port, jobs))

    port = ingest.free_port()
    command = [sys.executable, "-m", "creditsync.cli.main", "--log-json", "api", "--port",
               str(port)]
    with ingest.server(command, port, env):
        path = "/api/instances/{}/consume"
        consumed = throughput("consume", port,
                              consume_jobs(path, prefix, int(6000 * duration), auth))
        out["consume_rps"] = round(consumed)
        out["consume_vs_floor"] = round(consumed / out["floor_rps"], 3)
        half = consumed / 2
        results, _ = ingest.run_load(
            port, consume_jobs(path, prefix, int(half * duration), auth), concurrency,
            rate=half)
        lat = [r.latency_s for r in results]
        out["half_rate_rps"] = round(half)
        out["consume_p50_ms"] = round(ingest.pct(lat, .5), 2)
        out["consume_p99_ms"] = round(ingest.pct(lat, .99), 2)
        out["consume_half_rate_errors"] = sum(1 for r in results if not r.ok)
        _say(f"consume at {half:,.0f}/s: p50 {out['consume_p50_ms']} ms, "
             f"p99 {out['consume_p99_ms']} ms")
        done, failed, elapsed = asyncio.run(
            _pairs(port, prefix, auth, concurrency, duration, 0))
        out["reserve_commit_rps"] = round(done / elapsed)
        out["reserve_commit_vs_floor"] = round(out["reserve_commit_rps"] / out["floor_rps"], 3)
        if failed:
            out["reserve_commit_errors"] = failed
        _say(f"reserve + commit: {out['reserve_commit_rps']:,}/s pairs ({failed} failed)")
    out["targets_met"] = {
        "consume_at_least_50pct_of_floor": out["consume_vs_floor"] >= 0.5,
        "consume_p99_under_20ms_at_half_rate": out["consume_p99_ms"] < 20,
        "reserve_commit_at_least_40pct_of_floor": out["reserve_commit_vs_floor"] >= 0.4,
    }
    print(json.dumps(out), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
