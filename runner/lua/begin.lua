-- Start attempts at entries this consumer was given (read, or reclaimed): one call per batch,
-- each job decided on its own (see begin_attempt in lib.lua).
-- KEYS: stream, events, dead letters, entries index, counts
--       (each job's keys are derived from the prefix: same hash slot as the keys above)
-- ARGV: consumer, group, events_maxlen, max_attempts, ttl, prefix,
--       then per job: entry, job_id, digest, fields_json
-- Returns one begin_attempt reply per job ({'error', message} where one raised).
local bad = check_batch_keys()
if bad then return bad end
local c = batch_context()
local replies = {}
for a = 7, #ARGV, 4 do
  replies[#replies + 1] = try_begin(c, ARGV[a], ARGV[a + 1], ARGV[a + 2], ARGV[a + 3], nil)
end
return replies
