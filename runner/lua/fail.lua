-- End a job without a result (its own fault): record why, dead-letter it, acknowledge and
-- delete its entry.
-- KEYS: job, stream, events, checkpoint, checkpoint_segments, uploaded audio, entries index,
--       dead letters, counts
-- ARGV: fence ('' when no attempt was started), entry, group, state, reason, error, ttl,
--       job_id, worker, events_maxlen, fields_json, record ('0': only drop the entry),
--       dead_letter ('1': add to the dead letters), error_class
-- A job id whose record belongs to another entry is never touched: that is another job.
local job, stream, events = KEYS[1], KEYS[2], KEYS[3]
if ARGV[1] ~= '' and redis.call('HGET', job, 'fence') ~= ARGV[1] then
  return 0
end
local t = now()
local h = redis.call('HMGET', job, 'entry', 'state', 'attempts', 'history', 'fields')
local known_entry, state = h[1], h[2]
local ours = not known_entry or known_entry == ARGV[2]
if ARGV[12] == '1' and ours and state and is_terminal(state) then
  -- Already ended (a retried call after a lost reply): only make sure the entry is gone.
  redis.call('XACK', stream, ARGV[3], ARGV[2])
  redis.call('XDEL', stream, ARGV[2])
  redis.call('HDEL', KEYS[7], ARGV[2])
  return 1
end
if ARGV[12] == '1' and ours then
  if not known_entry then
    redis.call('HSET', job, 'entry', ARGV[2], 'created_at', t, 'attempts', 0, 'fence', 0,
      'fields', ARGV[11])
  end
  redis.call('HSET', job, 'state', ARGV[4], 'reason', ARGV[5], 'error', ARGV[6],
    'error_class', ARGV[14], 'finished_at', t)
  redis.call('EXPIRE', job, tonumber(ARGV[7]))
  redis.call('DEL', KEYS[4], KEYS[5])
  -- Uploaded audio outlives a failure, for a retry, but not the job's record.
  redis.call('EXPIRE', KEYS[6], tonumber(ARGV[7]))
end
if ARGV[13] == '1' then
  local fields = ARGV[11]
  local attempts, history = 0, '[]'
  if ours then
    attempts, history = h[3] or 0, h[4] or '[]'
    if ARGV[11] == '{}' and h[5] then fields = h[5] end
  end
  redis.call('XADD', KEYS[8], '*', 'job_id', ARGV[8], 'entry', ARGV[2], 'fields', fields,
    'reason', ARGV[5], 'error_class', ARGV[14], 'error', ARGV[6], 'attempts', attempts,
    'history', history, 'time', t)
end
redis.call('XACK', stream, ARGV[3], ARGV[2])
redis.call('XDEL', stream, ARGV[2])
redis.call('HDEL', KEYS[7], ARGV[2])
redis.call('HINCRBY', KEYS[9], ARGV[4], 1)
emit(events, ARGV[10], 'job.' .. ARGV[4], t, ARGV[8], ARGV[9],
  cjson.encode({reason = ARGV[5], error = ARGV[6], error_class = ARGV[14]}))
return 1
