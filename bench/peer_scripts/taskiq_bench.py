"""taskiq-redis (Redis Streams broker), no-op jobs:
`python taskiq_bench.py URL throughput|latency N CONCURRENCY`; prints JSON."""

import asyncio
import json
import sys
import time
import uuid

from taskiq.receiver import Receiver
from taskiq_redis import RedisAsyncResultBackend, RedisStreamBroker

URL, MODE, N, CONCURRENCY = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
broker = RedisStreamBroker(
    URL,
    queue_name=f"taskiq-bench-{uuid.uuid4().hex[:8]}",
    consumer_id="0",
    xread_count=CONCURRENCY,
).with_result_backend(RedisAsyncResultBackend(URL))
done = 0
finished = asyncio.Event()


@broker.task
async def noop() -> float:
    global done
    done += 1
    if done >= N:
        finished.set()
    return time.time()


async def main():
    await broker.startup()
    stop = asyncio.Event()
    receiver = Receiver(broker, max_async_tasks=CONCURRENCY, run_startup=False)
    if MODE == "throughput":
        sem = asyncio.Semaphore(64)

        async def one():
            async with sem:
                await noop.kiq()

        await asyncio.gather(*(one() for _ in range(N)))
        began = time.perf_counter()
        task = asyncio.create_task(receiver.listen(stop))
        await finished.wait()
        elapsed = time.perf_counter() - began
        print(json.dumps({"jobs_per_s": N / elapsed}), flush=True)
    else:
        task = asyncio.create_task(receiver.listen(stop))
        await asyncio.sleep(0.5)
        latencies = []
        for _ in range(N):
            sent = time.time()
            handle = await noop.kiq()
            result = await handle.wait_result(check_interval=0.0005)
            latencies.append((result.return_value - sent) * 1000)
        print(json.dumps({"latencies_ms": latencies}), flush=True)
    stop.set()
    task.cancel()
    await broker.shutdown()


asyncio.run(main())
