"""arq, no-op jobs: `python arq_bench.py URL throughput|latency N CONCURRENCY`; prints JSON."""

import asyncio
import json
import sys
import time
import uuid

from arq import create_pool
from arq.connections import RedisSettings
from arq.worker import Worker

URL, MODE, N, CONCURRENCY = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
QUEUE = f"arq-bench-{uuid.uuid4().hex[:8]}"


async def noop(ctx):
    return time.time()


async def main():
    settings = RedisSettings.from_dsn(URL)
    pool = await create_pool(settings, default_queue_name=QUEUE)
    worker = Worker(
        functions=[noop],
        redis_settings=settings,
        queue_name=QUEUE,
        max_jobs=CONCURRENCY,
        burst=MODE == "throughput",
        handle_signals=False,
        poll_delay=0.001,
        keep_result=60,
    )
    if MODE == "throughput":
        sem = asyncio.Semaphore(64)

        async def one():
            async with sem:
                await pool.enqueue_job("noop")

        await asyncio.gather(*(one() for _ in range(N)))
        began = time.perf_counter()
        await worker.main()
        elapsed = time.perf_counter() - began
        assert worker.jobs_complete == N, worker.jobs_complete
        print(json.dumps({"jobs_per_s": N / elapsed}))
    else:
        task = asyncio.create_task(worker.main())
        await asyncio.sleep(0.5)
        latencies = []
        for _ in range(N):
            sent = time.time()
            job = await pool.enqueue_job("noop")
            done = await job.result(poll_delay=0.0005)
            latencies.append((done - sent) * 1000)
        task.cancel()
        print(json.dumps({"latencies_ms": latencies}))
    await worker.close()
    await pool.aclose()


asyncio.run(main())
