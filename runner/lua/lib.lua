-- Shared by every script (prepended when the scripts are loaded).

-- Server time as "seconds.microseconds": one clock for every host.
local function now()
  local t = redis.call('TIME')
  return t[1] .. '.' .. string.format('%06d', tonumber(t[2]))
end

-- Append a lifecycle event to the capped events stream.
local function emit(events, maxlen, etype, time, job_id, worker, data)
  redis.call('XADD', events, 'MAXLEN', '~', maxlen, '*',
    'type', etype, 'time', time, 'job_id', job_id, 'worker', worker, 'data', data)
end

-- Who holds a pending entry, and how many times it was delivered; nil when not pending.
local function pending_owner(stream, group, entry)
  local p = redis.call('XPENDING', stream, group, entry, entry, 1)
  if #p == 0 then return nil, 0 end
  return p[1][2], p[1][4]
end

local function is_terminal(state)
  return state == 'completed' or state == 'failed' or state == 'dead' or state == 'cancelled'
end

-- A job's key, named as runner/keys.py names it: <prefix>:<kind>:<job_id> (kind: job, result,
-- ckpt, audio). Every key of a deployment shares the prefix's hash slot.
local function job_key(prefix, kind, job_id)
  return prefix .. ':' .. kind .. ':' .. job_id
end

-- Start an attempt at one job whose entry this consumer was given: check it still holds the
-- entry, take a new fencing token. Shared by begin (entries already read) and take (read and
-- begin in one call). c holds what a batch shares: stream, events, dead, index, counts,
-- consumer, group, maxlen, max_attempts, ttl, prefix, t (server time). deliveries: known when the
-- entry was just read with '>' (1), else nil: looked up with the owner.
-- Attempts count every start; a handed-back attempt is refunded by the release script.
-- Returns:
--   {'ok', fence, attempts, deliveries, has_checkpoint}  the attempt is ours
--   {'lost'}                  another consumer holds the entry now
--   {'done', state}           the job already ended; the entry was acked
--   {'duplicate', state}      same job submitted again; the entry was acked
--   {'conflict', state}       the job id is taken by a different job
--   {'dead', attempts}        out of attempts: moved to the dead letters and acked
local function begin_attempt(c, entry, job_id, job_digest, fields, deliveries)
  local stream, events, maxlen, t = c.stream, c.events, c.maxlen, c.t
  local job, ckpt = job_key(c.prefix, 'job', job_id), job_key(c.prefix, 'ckpt', job_id)
  if deliveries == nil then
    local owner
    owner, deliveries = pending_owner(stream, c.group, entry)
    if owner ~= c.consumer then
      return {'lost'}
    end
  end
  local h = redis.call('HMGET', job, 'state', 'entry', 'digest', 'attempts', 'worker',
    'history', 'error', 'fields')
  local state, known_entry, digest = h[1], h[2], h[3]
  local attempts, previous = tonumber(h[4] or 0), h[5]
  if state then
    if known_entry and known_entry ~= entry then
      if digest ~= job_digest then
        return {'conflict', state}
      end
      redis.call('XACK', stream, c.group, entry)
      redis.call('XDEL', stream, entry)
      return {'duplicate', state}
    end
    if is_terminal(state) then
      redis.call('XACK', stream, c.group, entry)
      redis.call('XDEL', stream, entry)
      redis.call('HDEL', c.index, entry)
      return {'done', state}
    end
  else
    -- Added by a plain XADD: the job's record starts here.
    redis.call('HSET', job, 'entry', entry, 'digest', job_digest, 'created_at', t,
      'attempts', 0, 'fence', 0, 'fields', fields)
    redis.call('HSET', c.index, entry, job_id)
  end

  local history = cjson.decode(h[6] or '[]')
  local last_error = h[7] or ''
  if state == 'running' and previous and previous ~= '' then
    -- The last attempt never ended: its worker died or froze past its lease.
    last_error = 'attempt ' .. attempts .. ' on ' .. previous .. ' did not finish'
    emit(events, maxlen, 'job.reclaimed', t, job_id, c.consumer,
      cjson.encode({from = previous, attempt = attempts}))
  end

  if attempts >= c.max_attempts then
    local reason = 'gave up after ' .. attempts .. ' attempts'
    if last_error ~= '' then reason = reason .. '; last: ' .. last_error end
    redis.call('XADD', c.dead, '*', 'job_id', job_id, 'entry', entry,
      'fields', h[8] or fields, 'reason', 'max_deliveries', 'error_class', 'job',
      'error', reason, 'attempts', attempts, 'deliveries', deliveries,
      'history', cjson.encode(history), 'time', t)
    redis.call('HSET', job, 'state', 'dead', 'reason', 'max_deliveries', 'error', reason,
      'finished_at', t, 'worker', '')
    redis.call('EXPIRE', job, c.ttl)
    redis.call('XACK', stream, c.group, entry)
    redis.call('XDEL', stream, entry)
    redis.call('HDEL', c.index, entry)
    redis.call('DEL', ckpt, ckpt .. ':segments')
    redis.call('HINCRBY', c.counts, 'dead', 1)
    emit(events, maxlen, 'job.dead', t, job_id, c.consumer,
      cjson.encode({reason = 'max_deliveries', error = reason, attempts = attempts}))
    return {'dead', attempts}
  end
  attempts = redis.call('HINCRBY', job, 'attempts', 1)
  local fence = redis.call('HINCRBY', job, 'fence', 1)
  table.insert(history, {attempt = attempts, worker = c.consumer, at = t, delivery = deliveries})
  while #history > 20 do table.remove(history, 1) end
  redis.call('HSET', job, 'state', 'running', 'worker', c.consumer, 'started_at', t,
    'history', cjson.encode(history), 'error', last_error)
  emit(events, maxlen, 'job.started', t, job_id, c.consumer,
    cjson.encode({attempt = attempts, delivery = deliveries}))
  return {'ok', fence, attempts, deliveries, redis.call('EXISTS', ckpt)}
end

-- What a batch of attempts shares, from KEYS[1..5] and ARGV[1..6] (see begin_attempt).
local function batch_context()
  return {stream = KEYS[1], events = KEYS[2], dead = KEYS[3], index = KEYS[4],
    counts = KEYS[5], consumer = ARGV[1], group = ARGV[2], maxlen = ARGV[3],
    max_attempts = tonumber(ARGV[4]), ttl = tonumber(ARGV[5]), prefix = ARGV[6], t = now()}
end
