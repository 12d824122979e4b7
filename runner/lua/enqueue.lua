-- Submit a job, once, within the client's rate limit.
-- KEYS: job, stream, events, uploaded audio, entries index, rate-limit log, counts
-- ARGV: job_id, digest, events_maxlen, fields_json, audio bytes ('' when the job names a
--       file), rate limit (jobs per window; 0: no limit), window_ms, then the entry's
--       field/value pairs
-- Returns {1, entry, digest} when added, {0, state, digest} when the id existed (nothing is
-- counted against the limit), {-1, retry_after_ms} when the limit is reached.
local job, stream, events, rl = KEYS[1], KEYS[2], KEYS[3], KEYS[6]
local existing = redis.call('HMGET', job, 'state', 'digest')
if existing[1] then
  return {0, existing[1], existing[2] or ''}
end
local t = now()
local limit, window = tonumber(ARGV[6]), tonumber(ARGV[7])
if limit > 0 then
  -- Sliding-window log: one member per accepted job, scored by server time in ms.
  local clock = redis.call('TIME')
  local now_ms = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
  redis.call('ZREMRANGEBYSCORE', rl, '-inf', now_ms - window)
  if redis.call('ZCARD', rl) >= limit then
    local oldest = redis.call('ZRANGE', rl, 0, 0, 'WITHSCORES')
    return {-1, math.max(1, tonumber(oldest[2]) + window - now_ms)}
  end
  -- The job id is unique, so two jobs in the same millisecond are two members.
  redis.call('ZADD', rl, now_ms, ARGV[1])
  redis.call('PEXPIRE', rl, window)
end
if ARGV[5] ~= '' then
  redis.call('SET', KEYS[4], ARGV[5])
end
local entry = redis.call('XADD', stream, '*', unpack(ARGV, 8))
redis.call('HSET', job, 'state', 'queued', 'entry', entry, 'digest', ARGV[2],
  'created_at', t, 'attempts', 0, 'fence', 0, 'fields', ARGV[4])
redis.call('HSET', KEYS[5], entry, ARGV[1])
redis.call('HINCRBY', KEYS[7], 'submitted', 1)
emit(events, ARGV[3], 'job.queued', t, ARGV[1], '', '{"entry":"' .. entry .. '"}')
return {1, entry, ARGV[2]}
