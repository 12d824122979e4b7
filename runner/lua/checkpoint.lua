-- Save a running job's progress: the header, and only the segments committed since last time.
-- KEYS: job, checkpoint, checkpoint segments, events
-- ARGV: fence, base (segments already saved), ttl, worker, job_id, events_maxlen, event_data,
--       pair count n, then n header field/value pairs, then the new segments (JSON)
-- Returns 1 saved, 0 fenced off (another attempt owns the job, or it ended), -1 base does not
-- match.
local job, ckpt, segs = KEYS[1], KEYS[2], KEYS[3]
if key_type(job) ~= 'hash' or check_keys({ckpt, 'hash', segs, 'list', KEYS[4], 'stream'}) then
  return 0  -- planted keys: the next attempt's start dead-letters the job with the reason
end
local h = redis.call('HMGET', job, 'fence', 'state')
if h[1] ~= ARGV[1] or h[2] ~= 'running' then
  return 0
end
local base = tonumber(ARGV[2])
local have = redis.call('LLEN', segs)
if have < base then
  return -1
end
if have > base then
  -- Segments a previous attempt saved past our resume point: ours replace them.
  if base == 0 then redis.call('DEL', segs) else redis.call('LTRIM', segs, 0, base - 1) end
end
local n = tonumber(ARGV[8])
local first = 9 + 2 * n
if #ARGV >= first then
  redis.call('RPUSH', segs, unpack(ARGV, first))
end
local t = now()
redis.call('HSET', ckpt, 'fence', ARGV[1], 'worker', ARGV[4], 'updated_at', t,
  unpack(ARGV, 9, 8 + 2 * n))
local ttl = tonumber(ARGV[3])
redis.call('EXPIRE', ckpt, ttl)
redis.call('EXPIRE', segs, ttl)
emit(KEYS[4], ARGV[6], 'job.checkpointed', t, ARGV[5], ARGV[4], ARGV[7])
return 1
