-- Publish results, then acknowledge and delete their entries: each all or nothing, fenced.
-- One call for every result that finished together; each job is decided on its own.
-- KEYS: stream, events, entries index, counts
--       (each job's keys are derived from the prefix: same hash slot as the keys above)
-- ARGV: group, result_ttl, events_maxlen, prefix,
--       then per job: fence, entry, job_id, worker, result_json, event_data
-- Returns one integer per job: 1 committed (or already was, by this attempt), 0 fenced off.
local stream, events, index, counts = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local bad = check_keys({stream, 'stream', events, 'stream', index, 'hash', counts, 'hash'})
if bad then return bad end
local group, ttl, maxlen, prefix = ARGV[1], tonumber(ARGV[2]), ARGV[3], ARGV[4]
local t = now()

local function commit_one(fence, entry, job_id, worker, result_json, event_data)
  local job = job_key(prefix, 'job', job_id)
  if key_type(job) ~= 'hash' then
    return 0
  end
  local h = redis.call('HMGET', job, 'fence', 'state', 'ended_fence')
  if h[2] == 'completed' and h[3] == fence then
    return 1  -- a retried call after a lost reply: already done
  end
  -- Only the running attempt holding the current token may publish: a terminal job stays so.
  if h[1] ~= fence or h[2] ~= 'running' then
    return 0
  end
  redis.call('SET', job_key(prefix, 'result', job_id), result_json, 'EX', ttl)
  next_fence(job)
  redis.call('HSET', job, 'state', 'completed', 'finished_at', t, 'ended_fence', fence)
  redis.call('HDEL', job, 'error', 'reason')
  redis.call('EXPIRE', job, ttl)
  drop_entry(stream, group, index, entry)
  redis.call('DEL', job_key(prefix, 'ckpt', job_id), job_key(prefix, 'segs', job_id),
    job_key(prefix, 'audio', job_id))
  redis.call('HINCRBY', counts, 'completed', 1)
  emit(events, maxlen, 'job.completed', t, job_id, worker, event_data)
  return 1
end

local replies = {}
for a = 5, #ARGV, 6 do
  replies[#replies + 1] = commit_one(ARGV[a], ARGV[a + 1], ARGV[a + 2], ARGV[a + 3],
    ARGV[a + 4], ARGV[a + 5])
end
return replies
