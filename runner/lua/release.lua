-- Hand a running job back so that a worker resumes it: at once, or after a delay.
-- KEYS: job, stream, events
-- ARGV: fence, entry, group, consumer, idle_ms (the idle time the entry is given: the lease
--       for at once, less for later), charge ('0': this attempt is refunded, it does not count
--       against the job's maximum), reason, events_maxlen, job_id, error
-- Returns 1 released, 0 not ours any more.
local job, stream = KEYS[1], KEYS[2]
if key_type(job) ~= 'hash' or check_keys({stream, 'stream', KEYS[3], 'stream'}) then
  return 0
end
local h = redis.call('HMGET', job, 'fence', 'state', 'attempts', 'history')
if h[1] ~= ARGV[1] or h[2] ~= 'running' then
  return 0
end
if pending_owner(stream, ARGV[3], ARGV[2]) ~= ARGV[4] then
  return 0
end
-- Back-date the delivery: the entry is now idle past the lease, so the next reclaim takes it.
redis.call('XCLAIM', stream, ARGV[3], ARGV[4], 0, ARGV[2], 'IDLE', ARGV[5], 'JUSTID')
-- A new token: nothing this attempt still has in flight can write any more.
next_fence(job)
redis.call('HSET', job, 'state', 'queued', 'worker', '')
local attempts = tonumber(h[3]) or 0
if ARGV[6] == '0' and attempts > 0 then
  redis.call('HSET', job, 'attempts', attempts - 1)
end
local history = decode_or(h[4], {})
if #history > 0 then
  history[#history]['released'] = ARGV[7]
  history[#history]['charged'] = ARGV[6] ~= '0'
  redis.call('HSET', job, 'history', cjson.encode(history))
end
if ARGV[10] ~= '' then
  redis.call('HSET', job, 'error', ARGV[10])
end
if ARGV[7] == 'engine_error' then
  redis.call('HINCRBY', job, 'engine_failures', 1)
end
emit(KEYS[3], ARGV[8], 'job.released', now(), ARGV[9], ARGV[4],
  cjson.encode({reason = ARGV[7], charged = ARGV[6] ~= '0'}))
return 1
