"""SAQ, no-op jobs: `python saq_bench.py URL throughput|latency N CONCURRENCY`; prints JSON."""

import asyncio
import json
import sys
import time
import uuid

from saq import Queue, Worker

URL, MODE, N, CONCURRENCY = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
done = 0
finished = asyncio.Event()


async def noop(ctx):
    global done
    done += 1
    if done >= N:
        finished.set()
    return time.time()


async def main():
    queue = Queue.from_url(URL, name=f"saq-bench-{uuid.uuid4().hex[:8]}")
    await queue.connect()
    worker = Worker(queue, functions=[noop], concurrency=CONCURRENCY)
    if MODE == "throughput":
        sem = asyncio.Semaphore(64)

        async def one():
            async with sem:
                await queue.enqueue("noop")

        await asyncio.gather(*(one() for _ in range(N)))
        began = time.perf_counter()
        task = asyncio.create_task(worker.start())
        await finished.wait()
        elapsed = time.perf_counter() - began
        print(json.dumps({"jobs_per_s": N / elapsed}))
    else:
        task = asyncio.create_task(worker.start())
        await asyncio.sleep(0.5)
        latencies = []
        for _ in range(N):
            sent = time.time()
            result = await queue.apply("noop", poll_interval=0.0005)
            latencies.append((result - sent) * 1000)
        print(json.dumps({"latencies_ms": latencies}))
    await worker.stop()
    task.cancel()
    await queue.disconnect()


asyncio.run(main())
