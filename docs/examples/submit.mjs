// Submit a job, then wait for its result: node submit.mjs /data/audio/a.wav
import { createClient } from "redis";

const prefix = process.env.RUNNER_PREFIX ?? "{runner}";
const redis = createClient({ url: process.env.RUNNER_REDIS_URL ?? "redis://localhost:6379/0" });
await redis.connect();

const jobId = `node-${Date.now()}`;
await redis.xAdd(`${prefix}:jobs`, "*", {
  job_id: jobId,
  audio: process.argv[2],
  language: "en",
  client_id: "node-example",
});
console.log(`queued ${jobId}`);

// Poll the job's record until it ends (or follow `${prefix}:events` with XREAD BLOCK).
for (;;) {
  const state = await redis.hGet(`${prefix}:job:${jobId}`, "state");
  if (state === "completed") {
    const result = JSON.parse(await redis.get(`${prefix}:result:${jobId}`));
    console.log(result.text);
    break;
  }
  if (["failed", "dead", "cancelled"].includes(state)) {
    console.error(`${state}: ${await redis.hGet(`${prefix}:job:${jobId}`, "error")}`);
    process.exitCode = 1;
    break;
  }
  await new Promise((resolve) => setTimeout(resolve, 500));
}
await redis.quit();
