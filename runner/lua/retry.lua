-- Resubmit a dead letter: a fresh record, a new entry, and the dead letter removed.
-- KEYS: dead letters, job, stream, events, entries index, result
-- ARGV: dead letter id, job_id, digest, fields_json, events_maxlen, then field/value pairs
-- Returns the new entry id, or 0 if the dead letter is gone, or -1 if the job is live again.
local dead, job, stream = KEYS[1], KEYS[2], KEYS[3]
if #redis.call('XRANGE', dead, ARGV[1], ARGV[1]) == 0 then
  return 0
end
local state = redis.call('HGET', job, 'state')
if state and not is_terminal(state) then
  return -1
end
redis.call('DEL', job, KEYS[6])
redis.call('XDEL', dead, ARGV[1])
local entry = redis.call('XADD', stream, '*', unpack(ARGV, 6))
local t = now()
redis.call('HSET', job, 'state', 'queued', 'entry', entry, 'digest', ARGV[3],
  'created_at', t, 'attempts', 0, 'fence', 0, 'fields', ARGV[4], 'retried_from', ARGV[1])
redis.call('HSET', KEYS[5], entry, ARGV[2])
emit(KEYS[4], ARGV[5], 'job.retried', t, ARGV[2], '', cjson.encode({dead_letter = ARGV[1]}))
return entry
