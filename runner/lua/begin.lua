-- Start an attempt at a job: check this consumer holds the entry, take a new fencing token.
-- KEYS: job, stream, events, checkpoint, checkpoint segments, dead letters, entries index,
--       counts
-- ARGV: entry, job_id, consumer, group, digest, fields_json, events_maxlen, max_attempts, ttl
-- Attempts count every start; a handed-back attempt is refunded by the release script.
-- Returns {outcome, ...}:
--   {'ok', fence, attempts, deliveries, has_checkpoint}  the attempt is ours
--   {'lost'}                  another consumer holds the entry now
--   {'done', state}           the job already ended; the entry was acked
--   {'duplicate', state}      same job submitted again; the entry was acked
--   {'conflict', state}       the job id is taken by a different job
--   {'dead', attempts}        out of attempts: moved to the dead letters and acked
local job, stream, events = KEYS[1], KEYS[2], KEYS[3]
local entry, job_id, consumer, group = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local maxlen = ARGV[7]
local owner, deliveries = pending_owner(stream, group, entry)
if owner ~= consumer then
  return {'lost'}
end
local h = redis.call('HMGET', job, 'state', 'entry', 'digest', 'attempts', 'worker',
  'history', 'error', 'fields')
local state, known_entry, digest = h[1], h[2], h[3]
local attempts, previous = tonumber(h[4] or 0), h[5]
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
    redis.call('HDEL', KEYS[7], entry)
    return {'done', state}
  end
else
  -- Added by a plain XADD: the job's record starts here.
  redis.call('HSET', job, 'entry', entry, 'digest', ARGV[5], 'created_at', t,
    'attempts', 0, 'fence', 0, 'fields', ARGV[6])
  redis.call('HSET', KEYS[7], entry, job_id)
end

local history = cjson.decode(h[6] or '[]')
local last_error = h[7] or ''
if state == 'running' and previous and previous ~= '' then
  -- The last attempt never ended: its worker died or froze past its lease.
  last_error = 'attempt ' .. attempts .. ' on ' .. previous .. ' did not finish'
  emit(events, maxlen, 'job.reclaimed', t, job_id, consumer,
    cjson.encode({from = previous, attempt = attempts}))
end

if attempts >= tonumber(ARGV[8]) then
  local reason = 'gave up after ' .. attempts .. ' attempts'
  if last_error ~= '' then reason = reason .. '; last: ' .. last_error end
  redis.call('XADD', KEYS[6], '*', 'job_id', job_id, 'entry', entry,
    'fields', h[8] or ARGV[6], 'reason', 'max_deliveries', 'error_class', 'job',
    'error', reason, 'attempts', attempts, 'deliveries', deliveries,
    'history', cjson.encode(history), 'time', t)
  redis.call('HSET', job, 'state', 'dead', 'reason', 'max_deliveries', 'error', reason,
    'finished_at', t, 'worker', '')
  redis.call('EXPIRE', job, tonumber(ARGV[9]))
  redis.call('XACK', stream, group, entry)
  redis.call('XDEL', stream, entry)
  redis.call('HDEL', KEYS[7], entry)
  redis.call('DEL', KEYS[4], KEYS[5])
  redis.call('HINCRBY', KEYS[8], 'dead', 1)
  emit(events, maxlen, 'job.dead', t, job_id, consumer,
    cjson.encode({reason = 'max_deliveries', error = reason, attempts = attempts}))
  return {'dead', attempts}
end
attempts = redis.call('HINCRBY', job, 'attempts', 1)
local fence = redis.call('HINCRBY', job, 'fence', 1)
table.insert(history, {attempt = attempts, worker = consumer, at = t, delivery = deliveries})
while #history > 20 do table.remove(history, 1) end
redis.call('HSET', job, 'state', 'running', 'worker', consumer, 'started_at', t,
  'history', cjson.encode(history), 'error', last_error)
emit(events, maxlen, 'job.started', t, job_id, consumer,
  cjson.encode({attempt = attempts, delivery = deliveries}))
return {'ok', fence, attempts, deliveries, redis.call('EXISTS', KEYS[4])}
