-- Start an attempt at a job: check this consumer holds the entry, take a new fencing token.
-- KEYS: job, stream, events
-- ARGV: entry, job_id, consumer, group, digest, fields_json, events_maxlen, count_attempt
-- Returns {outcome, ...}:
--   {'ok', fence, attempts, deliveries}   the attempt is ours
--   {'lost'}                               another consumer holds the entry now
--   {'done', state}                        the job already ended; the entry was acked
--   {'duplicate', state}                   same job submitted again; the entry was acked
--   {'conflict', state}                    the job id is taken by a different job
local job, stream, events = KEYS[1], KEYS[2], KEYS[3]
local entry, job_id, consumer, group = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local owner, deliveries = pending_owner(stream, group, entry)
if owner ~= consumer then
  return {'lost'}
end
local h = redis.call('HMGET', job, 'state', 'entry', 'digest')
local state, known_entry, digest = h[1], h[2], h[3]
local t = now()
if state then
  if known_entry and known_entry ~= entry then
    if digest ~= ARGV[5] then
      return {'conflict', state}
    end
    redis.call('XACK', stream, group, entry)
    redis.call('XDEL', stream, entry)
    return {'duplicate', state}
  end
  if is_terminal(state) then
    redis.call('XACK', stream, group, entry)
    redis.call('XDEL', stream, entry)
    return {'done', state}
  end
else
  -- Added by a plain XADD: the job's record starts here.
  redis.call('HSET', job, 'entry', entry, 'digest', ARGV[5], 'created_at', t,
    'attempts', 0, 'fence', 0, 'fields', ARGV[6])
end
local fence = redis.call('HINCRBY', job, 'fence', 1)
local attempts = redis.call('HINCRBY', job, 'attempts', tonumber(ARGV[8]))
redis.call('HSET', job, 'state', 'running', 'worker', consumer, 'started_at', t)
emit(events, ARGV[7], 'job.started', t, job_id, consumer,
  '{"attempt":' .. attempts .. ',"delivery":' .. deliveries .. '}')
return {'ok', fence, attempts, deliveries}
