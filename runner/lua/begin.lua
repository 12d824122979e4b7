-- Start attempts at entries this consumer was given (read, or reclaimed): one call per batch,
-- each job decided on its own (see begin_attempt in lib.lua).
-- KEYS: stream, events, dead letters, entries index, counts,
--       then per job: job, checkpoint, checkpoint segments
-- ARGV: consumer, group, events_maxlen, max_attempts, ttl,
--       then per job: entry, job_id, digest, fields_json
-- Returns one begin_attempt reply per job.
local c = batch_context()
local replies = {}
for i = 0, (#KEYS - 5) / 3 - 1 do
  local k, a = 6 + 3 * i, 6 + 4 * i
  replies[#replies + 1] = begin_attempt(c, KEYS[k], KEYS[k + 1], KEYS[k + 2],
    ARGV[a], ARGV[a + 1], ARGV[a + 2], ARGV[a + 3], nil)
end
return replies
