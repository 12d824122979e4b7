"""streaQ (Redis Streams), no-op jobs:
`python streaq_bench.py URL throughput|latency N CONCURRENCY`; prints JSON."""

import asyncio
import json
import sys
import time
import uuid

from streaq import Worker

URL, MODE, N, CONCURRENCY = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
worker = Worker(
    redis_url=URL,
    concurrency=CONCURRENCY,
    queue_name=f"streaq-bench-{uuid.uuid4().hex[:8]}",
    handle_signals=False,
)


@worker.task()
async def noop() -> float:
    return time.time()


async def main():
    if MODE == "throughput":
        async with worker:
            sem = asyncio.Semaphore(64)

            async def one():
                async with sem:
                    await noop.enqueue()

            await asyncio.gather(*(one() for _ in range(N)))
        worker.burst = True
        began = time.perf_counter()
        await worker.run_async()
        elapsed = time.perf_counter() - began
        print(json.dumps({"jobs_per_s": N / elapsed}), flush=True)
    else:
        runner = asyncio.create_task(worker.run_async())
        await asyncio.sleep(0.5)
        latencies = []
        # run_async holds the worker's connection: enqueue through it.
        for _ in range(N):
            sent = time.time()
            task = await noop.enqueue()
            result = await task.result(timeout=30)
            latencies.append((result.result - sent) * 1000)
        print(json.dumps({"latencies_ms": latencies}), flush=True)
        runner.cancel()


asyncio.run(main())
