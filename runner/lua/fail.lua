-- End a job without a result (its own fault): record why, acknowledge and delete its entry.
-- KEYS: job, stream, events, checkpoint, checkpoint_segments, uploaded audio, entries index
-- ARGV: fence ('' when no attempt was started), entry, group, state, reason, error, ttl,
--       job_id, worker, events_maxlen, fields_json, record ('0': only drop the entry)
-- A job id whose record belongs to another entry is never touched: that is another job.
local job, stream, events = KEYS[1], KEYS[2], KEYS[3]
if ARGV[1] ~= '' and redis.call('HGET', job, 'fence') ~= ARGV[1] then
  return 0
end
local t = now()
local h = redis.call('HMGET', job, 'entry', 'state')
local known_entry, state = h[1], h[2]
if ARGV[12] == '1' and (not known_entry or known_entry == ARGV[2])
    and not (state and is_terminal(state)) then
  if not known_entry then
    redis.call('HSET', job, 'entry', ARGV[2], 'created_at', t, 'attempts', 0, 'fence', 0,
      'fields', ARGV[11])
  end
  redis.call('HSET', job, 'state', ARGV[4], 'reason', ARGV[5], 'error', ARGV[6], 'finished_at', t)
  redis.call('EXPIRE', job, tonumber(ARGV[7]))
  redis.call('DEL', KEYS[4], KEYS[5])
  -- Uploaded audio outlives a failure, for a retry, but not the job's record.
  redis.call('EXPIRE', KEYS[6], tonumber(ARGV[7]))
end
redis.call('XACK', stream, ARGV[3], ARGV[2])
redis.call('XDEL', stream, ARGV[2])
redis.call('HDEL', KEYS[7], ARGV[2])
emit(events, ARGV[10], 'job.' .. ARGV[4], t, ARGV[8], ARGV[9],
  cjson.encode({reason = ARGV[5], error = ARGV[6]}))
return 1
