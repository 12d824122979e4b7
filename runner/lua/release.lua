-- Hand a running job back so that any worker resumes it now, not after the lease.
-- KEYS: job, stream, events
-- ARGV: fence, entry, group, consumer, idle_ms, charge ('0': this attempt is not counted
--       against the job), reason, events_maxlen, job_id, error
-- Returns 1 released, 0 not ours any more.
local job, stream = KEYS[1], KEYS[2]
if redis.call('HGET', job, 'fence') ~= ARGV[1] then
  return 0
end
if pending_owner(stream, ARGV[3], ARGV[2]) ~= ARGV[4] then
  return 0
end
-- Back-date the delivery: the entry is now idle past the lease, so the next reclaim takes it.
redis.call('XCLAIM', stream, ARGV[3], ARGV[4], 0, ARGV[2], 'IDLE', ARGV[5], 'JUSTID')
-- A new token: nothing this attempt still has in flight can write any more.
redis.call('HINCRBY', job, 'fence', 1)
redis.call('HSET', job, 'state', 'queued', 'worker', '')
if ARGV[6] == '0' then
  redis.call('HSET', job, 'uncharged', '1')
end
if ARGV[10] ~= '' then
  redis.call('HSET', job, 'error', ARGV[10])
end
emit(KEYS[3], ARGV[8], 'job.released', now(), ARGV[9], ARGV[4],
  cjson.encode({reason = ARGV[7], charged = ARGV[6] ~= '0'}))
return 1
