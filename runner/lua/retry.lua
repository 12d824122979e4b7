-- Resubmit a dead letter as the job's next generation: a fresh record (its tokens above every
-- earlier one, see next_fence), a new entry, and the dead letter removed.
-- KEYS: dead letters, job, stream, events, entries index, result
-- ARGV: dead letter id, job_id, digest, fields_json, events_maxlen, then field/value pairs
-- Returns the new entry id, or a code: 0 the dead letter is gone, -1 the job is queued or
-- running again, -2 the job completed (its result is never touched), -3 the letter is not the
-- job's (the id belongs to another submission), -4 the letter's fields were not kept whole.
local dead, job, stream = KEYS[1], KEYS[2], KEYS[3]
local bad = check_keys({dead, 'stream', job, 'hash', stream, 'stream', KEYS[4], 'stream',
  KEYS[5], 'hash'})
if bad then return bad end
local found = redis.call('XRANGE', dead, ARGV[1], ARGV[1])
if #found == 0 then
  return 0
end
local letter = {}
for i = 1, #found[1][2], 2 do
  letter[found[1][2][i]] = found[1][2][i + 1]
end
local h = redis.call('HMGET', job, 'state', 'entry', 'generation')
local state = h[1]
if state == 'completed' or redis.call('EXISTS', KEYS[6]) == 1 then
  return -2
end
if state and h[2] ~= letter['entry'] then
  return -3
end
if state and not is_terminal(state) then
  return -1
end
if letter['truncated'] == '1' then
  return -4
end
redis.call('DEL', job)
redis.call('XDEL', dead, ARGV[1])
local entry = redis.call('XADD', stream, '*', unpack(ARGV, 6))
local t = now()
redis.call('HSET', job, 'state', 'queued', 'entry', entry, 'digest', ARGV[3],
  'created_at', t, 'attempts', 0, 'fields', ARGV[4], 'retried_from', ARGV[1],
  'generation', (tonumber(h[3]) or 0) + 1)
next_fence(job)
redis.call('HSET', KEYS[5], entry, ARGV[2])
emit(KEYS[4], ARGV[5], 'job.retried', t, ARGV[2], '', cjson.encode({dead_letter = ARGV[1]}))
return entry
