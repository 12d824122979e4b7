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

-- An entry is done with: acknowledged, deleted from the stream and from the entries index.
local function drop_entry(stream, group, index, entry)
  redis.call('XACK', stream, group, entry)
  redis.call('XDEL', stream, entry)
  redis.call('HDEL', index, entry)
end

local function is_terminal(state)
  return state == 'completed' or state == 'failed' or state == 'dead' or state == 'cancelled'
end

-- A job's key, named as runner/keys.py names it: <prefix>:<kind>:<job_id> (kind: job, result,
-- ckpt, segs, audio). The kind comes before the id and holds no colon, so no two jobs' keys can
-- meet, whatever their ids. Every key of a deployment shares the prefix's hash slot.
local function job_key(prefix, kind, job_id)
  return prefix .. ':' .. kind .. ':' .. job_id
end

-- The type of a key: none, string, hash, list, zset, stream...
local function key_type(key)
  return redis.call('TYPE', key)['ok']
end

-- Deployment-wide keys must hold their own type before a script writes anything: a key of
-- another type planted at one of their names would fail the script half-way. `expected` lists
-- key, type, key, type... Returns an error reply to return at once, or nil.
local function check_keys(expected)
  for i = 1, #expected, 2 do
    local found = key_type(expected[i])
    if found ~= 'none' and found ~= expected[i + 1] then
      return redis.error_reply('KEYTYPE ' .. expected[i] .. ' holds a ' .. found ..
        ' where the runner keeps a ' .. expected[i + 1])
    end
  end
  return nil
end

-- The message of an error caught by pcall (redis.call raises a table with `err`).
local function error_text(e)
  if type(e) == 'table' then return tostring(e.err or e[1] or 'error') end
  return tostring(e)
end

-- JSON read from a record: anything that does not decode to a table gives `default`.
local function decode_or(text, default)
  if not text then return default end
  local ok, value = pcall(cjson.decode, text)
  if ok and type(value) == 'table' then return value end
  return default
end

-- Take a new fencing token for a job: above the last one and above the server clock in
-- microseconds. Tokens built on the clock keep rising where a counter would restart: a record
-- recreated (dead retry, expired then resubmitted) or a Redis that lost its last writes.
local function next_fence(job)
  local t = redis.call('TIME')
  local clock = tonumber(t[1]) * 1000000 + tonumber(t[2])
  local current = tonumber(redis.call('HGET', job, 'fence') or '0') or 0
  local fence = string.format('%.0f', math.max(clock, current + 1))
  redis.call('HSET', job, 'fence', fence)
  return fence
end

-- The keys of one job that hold a type the runner never writes there (someone planted them):
-- a message naming them, or nil.
local function foreign_job_keys(prefix, job_id)
  local expected = {job = 'hash', ckpt = 'hash', segs = 'list', audio = 'string'}
  local bad = {}
  for _, kind in ipairs({'job', 'ckpt', 'segs', 'audio'}) do
    local key = job_key(prefix, kind, job_id)
    local found = key_type(key)
    if found ~= 'none' and found ~= expected[kind] then
      bad[#bad + 1] = key .. ' holds a ' .. found .. ', not a ' .. expected[kind]
    end
  end
  if #bad == 0 then return nil end
  return 'keys of this job id hold data the runner did not write: ' .. table.concat(bad, '; ')
end

local function del_if(key, kind)
  if key_type(key) == kind then redis.call('DEL', key) end
end

-- End a job without a result. c: what the call shares (see batch_context); e: job_id, entry,
-- state (failed, dead), reason, error, error_class, fields (JSON), fence ('' when no attempt
-- was started, else the attempt's token: refused unless current), record (false: the id belongs
-- to another job, whose record is left alone), dead_letter, deliveries.
-- The job's record (when it is the entry's own) takes the state and a new token; the entry is
-- acknowledged and deleted; the checkpoint goes; uploaded audio lives as long as the record.
-- Returns 1 ended (or already was, by this same call), 0 fenced off.
local function end_job(c, e)
  local job = job_key(c.prefix, 'job', e.job_id)
  local t = c.t
  local kind = key_type(job)
  local ours = e.record and (kind == 'hash' or kind == 'none')
  -- The id is the entry's own, but its record's name holds foreign data: the job ends all the
  -- same (dead letter, event), without a record.
  local unrecorded = e.record and not ours
  local h = {}
  if ours then
    h = redis.call('HMGET', job, 'entry', 'state', 'attempts', 'history', 'fields', 'fence',
      'ended_fence')
    if h[1] and h[1] ~= e.entry then ours = false end
  end
  if e.fence ~= '' then
    if not ours then return 0 end
    if h[2] and is_terminal(h[2]) and h[7] == e.fence then
      return 1  -- a retried call after a lost reply: already done
    end
    if h[6] ~= e.fence or h[2] ~= 'running' then return 0 end
  end
  local already = ours and h[2] and is_terminal(h[2])
  if ours and not already then
    if not h[1] then
      redis.call('HSET', job, 'entry', e.entry, 'created_at', t, 'attempts', 0, 'fields', e.fields)
    end
    next_fence(job)
    redis.call('HSET', job, 'state', e.state, 'reason', e.reason, 'error', e.error,
      'error_class', e.error_class, 'finished_at', t, 'ended_fence', e.fence)
    redis.call('EXPIRE', job, c.ttl)
    del_if(job_key(c.prefix, 'ckpt', e.job_id), 'hash')
    del_if(job_key(c.prefix, 'segs', e.job_id), 'list')
    -- Uploaded audio outlives a failure, for a retry, but not the job's record.
    local audio = job_key(c.prefix, 'audio', e.job_id)
    if key_type(audio) == 'string' then redis.call('EXPIRE', audio, c.ttl) end
  end
  if e.dead_letter and not already then
    local fields, attempts, history = e.fields, 0, '[]'
    if ours then
      attempts, history = tonumber(h[3]) or 0, h[4] or '[]'
      if e.fields == '{}' and h[5] then fields = h[5] end
    end
    redis.call('XADD', c.dead, '*', 'job_id', e.job_id, 'entry', e.entry, 'fields', fields,
      'reason', e.reason, 'error_class', e.error_class, 'error', e.error, 'attempts', attempts,
      'deliveries', e.deliveries or '', 'history', history, 'truncated', e.truncated or '0',
      'time', t)
  end
  drop_entry(c.stream, c.group, c.index, e.entry)
  if already then return 1 end
  local data = cjson.encode({reason = e.reason, error = e.error, error_class = e.error_class})
  if ours or unrecorded then
    redis.call('HINCRBY', c.counts, e.state, 1)
    emit(c.events, c.maxlen, 'job.' .. e.state, t, e.job_id, e.worker, data)
  else
    -- Not this id's job (a reused id): the job that owns the id did not end.
    redis.call('HINCRBY', c.counts, 'rejected', 1)
    emit(c.events, c.maxlen, 'entry.rejected', t, e.job_id, e.worker, data)
  end
  return 1
end

-- Start an attempt at one job whose entry this consumer was given: check it still holds the
-- entry, take a new fencing token. Shared by begin (entries already read) and take (read and
-- begin in one call). c holds what a batch shares (see batch_context). deliveries: known when
-- the entry was just read with '>' (1), else nil: looked up with the owner.
-- Attempts count every start; a handed-back attempt is refunded by the release script.
-- Returns:
--   {'ok', fence, attempts, deliveries, has_checkpoint}  the attempt is ours
--   {'lost'}                  another consumer holds the entry now
--   {'done', state}           the job already ended; the entry was acked
--   {'duplicate', state}      same job submitted again; the entry was acked
--   {'conflict', state}       the job id is taken by a different job
--   {'dead', attempts}        out of attempts: moved to the dead letters and acked
--   {'failed', reason, error} the job cannot run (its keys hold foreign data): dead-lettered
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
  local foreign = foreign_job_keys(c.prefix, job_id)
  if foreign then
    end_job(c, {job_id = job_id, entry = entry, state = 'failed', reason = 'key_conflict',
      error = foreign, error_class = 'job', fields = fields, fence = '', record = true,
      dead_letter = true, deliveries = deliveries,
      worker = c.consumer})
    return {'failed', 'key_conflict', foreign}
  end
  local h = redis.call('HMGET', job, 'state', 'entry', 'digest', 'attempts', 'worker',
    'history', 'error', 'fields')
  local state, known_entry, digest = h[1], h[2], h[3]
  local attempts, previous = tonumber(h[4]) or 0, h[5]
  if state then
    if known_entry and known_entry ~= entry then
      if digest ~= job_digest then
        return {'conflict', state}
      end
      drop_entry(stream, c.group, c.index, entry)
      return {'duplicate', state}
    end
    if is_terminal(state) then
      drop_entry(stream, c.group, c.index, entry)
      return {'done', state}
    end
  else
    -- Added by a plain XADD: the job's record starts here.
    redis.call('HSET', job, 'entry', entry, 'digest', job_digest, 'created_at', t,
      'attempts', 0, 'fields', fields)
    redis.call('HSET', c.index, entry, job_id)
  end

  local history = decode_or(h[6], {})
  local last_error = h[7] or ''
  local last = history[#history]
  if state == 'running' and previous == c.consumer and type(last) == 'table'
      and last.worker == c.consumer and tonumber(last.delivery) == tonumber(deliveries) then
    -- This very delivery was begun already: a call retried after its reply was lost. The
    -- attempt it started is the one to run, not another to charge.
    return {'ok', redis.call('HGET', job, 'fence'), attempts, deliveries,
      redis.call('EXISTS', ckpt)}
  end
  if state == 'running' and previous and previous ~= '' then
    -- The last attempt never ended: its worker died or froze past its lease.
    last_error = 'attempt ' .. attempts .. ' on ' .. previous .. ' did not finish'
    emit(events, maxlen, 'job.reclaimed', t, job_id, c.consumer,
      cjson.encode({from = previous, attempt = attempts}))
  end

  if attempts >= c.max_attempts then
    local reason = 'gave up after ' .. attempts .. ' attempts'
    if last_error ~= '' then reason = reason .. '; last: ' .. last_error end
    end_job(c, {job_id = job_id, entry = entry, state = 'dead', reason = 'max_deliveries',
      error = reason, error_class = 'job', fields = h[8] or fields, fence = '', record = true,
      dead_letter = true, deliveries = deliveries, worker = c.consumer})
    redis.call('HSET', job, 'worker', '')
    return {'dead', attempts}
  end
  attempts = attempts + 1
  local fence = next_fence(job)
  table.insert(history, {attempt = attempts, worker = c.consumer, at = t, delivery = deliveries})
  while #history > 20 do table.remove(history, 1) end
  redis.call('HSET', job, 'state', 'running', 'attempts', attempts, 'worker', c.consumer,
    'started_at', t, 'history', cjson.encode(history), 'error', last_error)
  emit(events, maxlen, 'job.started', t, job_id, c.consumer,
    cjson.encode({attempt = attempts, delivery = deliveries}))
  return {'ok', fence, attempts, deliveries, redis.call('EXISTS', ckpt)}
end

-- begin_attempt, with whatever it raises turned into {'error', message}: one job's failure
-- never fails the rest of a batch (nor, in take, leaves entries read and answered to nobody).
local function try_begin(c, entry, job_id, job_digest, fields, deliveries)
  local ok, reply = pcall(begin_attempt, c, entry, job_id, job_digest, fields, deliveries)
  if ok then return reply end
  return {'error', error_text(reply)}
end

-- What a call shares, from KEYS[1..5] and ARGV[1..6]: stream, events, dead letters, entries
-- index, counts; consumer, group, events_maxlen, max_attempts, ttl, prefix.
local function batch_context()
  return {stream = KEYS[1], events = KEYS[2], dead = KEYS[3], index = KEYS[4],
    counts = KEYS[5], consumer = ARGV[1], group = ARGV[2], maxlen = ARGV[3],
    max_attempts = tonumber(ARGV[4]), ttl = tonumber(ARGV[5]), prefix = ARGV[6], t = now()}
end

-- The deployment-wide keys of a batch_context call, checked (see check_keys).
local function check_batch_keys()
  return check_keys({KEYS[1], 'stream', KEYS[2], 'stream', KEYS[3], 'stream',
    KEYS[4], 'hash', KEYS[5], 'hash'})
end
