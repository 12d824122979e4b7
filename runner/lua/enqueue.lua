-- Submit a job, once. A job id that already exists is left alone (idempotent submission).
-- KEYS: job, stream, events, uploaded audio, entries index
-- ARGV: job_id, digest, events_maxlen, fields_json, audio bytes ('' when the job names a
--       file), then the entry's field/value pairs
-- Returns {1, entry, digest} when added, {0, state, digest} when the id existed.
local job, stream, events = KEYS[1], KEYS[2], KEYS[3]
local existing = redis.call('HMGET', job, 'state', 'digest')
if existing[1] then
  return {0, existing[1], existing[2] or ''}
end
if ARGV[5] ~= '' then
  redis.call('SET', KEYS[4], ARGV[5])
end
local entry = redis.call('XADD', stream, '*', unpack(ARGV, 6))
local t = now()
redis.call('HSET', job, 'state', 'queued', 'entry', entry, 'digest', ARGV[2],
  'created_at', t, 'attempts', 0, 'fence', 0, 'fields', ARGV[4])
redis.call('HSET', KEYS[5], entry, ARGV[1])
emit(events, ARGV[3], 'job.queued', t, ARGV[1], '', '{"entry":"' .. entry .. '"}')
return {1, entry, ARGV[2]}
