-- Cancel a job: a queued one never starts; a running one loses its token (its worker stops at
-- the next window, and none of its writes lands).
-- KEYS: job, stream, events, entries index, checkpoint, checkpoint segments, uploaded audio,
--       counts
-- ARGV: job_id, group, events_maxlen, ttl
-- Returns {'cancelled', previous state} or {'ended', state} (already over) or {'missing'}.
local job, stream = KEYS[1], KEYS[2]
local bad = check_keys({job, 'hash', stream, 'stream', KEYS[3], 'stream', KEYS[4], 'hash',
  KEYS[8], 'hash'})
if bad then return bad end
local h = redis.call('HMGET', job, 'state', 'entry', 'worker')
local state, entry = h[1], h[2]
if not state then
  return {'missing'}
end
if is_terminal(state) then
  return {'ended', state}
end
local t = now()
next_fence(job)
redis.call('HSET', job, 'state', 'cancelled', 'finished_at', t, 'reason', 'cancelled',
  'error', 'cancelled by request', 'ended_fence', '')
redis.call('EXPIRE', job, tonumber(ARGV[4]))
if entry then
  drop_entry(stream, ARGV[2], KEYS[4], entry)
end
redis.call('DEL', KEYS[5], KEYS[6], KEYS[7])
redis.call('HINCRBY', KEYS[8], 'cancelled', 1)
emit(KEYS[3], ARGV[3], 'job.cancelled', t, ARGV[1], h[3] or '',
  cjson.encode({previous = state}))
return {'cancelled', state}
