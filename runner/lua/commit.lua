-- Publish a job's result, then acknowledge and delete its entry: all or nothing, fenced.
-- KEYS: job, result, stream, events, checkpoint, checkpoint_segments, uploaded audio,
--       entries index, counts
-- ARGV: fence, entry, group, result_json, result_ttl, job_id, worker, events_maxlen, event_data
local job, result, stream, events = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local h = redis.call('HMGET', job, 'fence', 'state')
if h[1] ~= ARGV[1] then
  return 0
end
if h[2] == 'completed' then
  return 1  -- a retried call after a lost reply: already done
end
local t = now()
local ttl = tonumber(ARGV[5])
redis.call('SET', result, ARGV[4], 'EX', ttl)
redis.call('HSET', job, 'state', 'completed', 'finished_at', t)
redis.call('HDEL', job, 'error', 'reason')
redis.call('EXPIRE', job, ttl)
redis.call('XACK', stream, ARGV[3], ARGV[2])
redis.call('XDEL', stream, ARGV[2])
redis.call('DEL', KEYS[5], KEYS[6], KEYS[7])
redis.call('HDEL', KEYS[8], ARGV[2])
redis.call('HINCRBY', KEYS[9], 'completed', 1)
emit(events, ARGV[8], 'job.completed', t, ARGV[6], ARGV[7], ARGV[9])
return 1
