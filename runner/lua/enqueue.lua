-- Submit jobs, each once, within their clients' rate limits: all of the call's new jobs, or
-- none of them when any client would pass its limit.
-- KEYS: stream, events, entries index, counts, then per job: job, uploaded audio, rate-limit log
-- ARGV: events_maxlen, rate limit (jobs per window; 0: no limit), window_ms, then per job:
--       job_id, digest, fields_json, audio bytes ('' when the job names a file), n, then the
--       entry's n field/value pairs
-- Returns per job {1, entry, digest} when added or {0, state, digest} when the id existed
-- (nothing is counted against the limit); or {-1, retry_after_ms, job index} when the limit
-- is reached (nothing was added).
local stream, events, index, counts = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local bad = check_keys({stream, 'stream', events, 'stream', index, 'hash', counts, 'hash'})
if bad then return bad end
local maxlen, limit, window = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])

-- Read the jobs off ARGV.
local jobs = {}
local a = 4
while a <= #ARGV do
  local n = tonumber(ARGV[a + 4])
  local k = 4 + 3 * #jobs
  jobs[#jobs + 1] = {job = KEYS[k + 1], audio = KEYS[k + 2], rl = KEYS[k + 3], id = ARGV[a],
    digest = ARGV[a + 1], fields = ARGV[a + 2], bytes = ARGV[a + 3], first = a + 5,
    last = a + 4 + 2 * n}
  a = a + 5 + 2 * n
end

-- First pass, no writes: which ids exist, and what the new ones cost each client.
local wanted, order = {}, {}
for i, j in ipairs(jobs) do
  bad = check_keys({j.job, 'hash', j.audio, 'string', j.rl, 'zset'})
  if bad then return bad end
  local existing = redis.call('HMGET', j.job, 'state', 'digest')
  if existing[1] then
    j.existing = {0, existing[1], existing[2] or ''}
  elseif limit > 0 then
    if not wanted[j.rl] then
      wanted[j.rl] = 0
      order[#order + 1] = {j.rl, i}
    end
    wanted[j.rl] = wanted[j.rl] + 1
  end
end
local now_ms = 0
if limit > 0 and #order > 0 then
  -- Sliding-window log: one member per accepted job, scored by server time in ms.
  local clock = redis.call('TIME')
  now_ms = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
  for _, pair in ipairs(order) do
    local rl, need = pair[1], wanted[pair[1]]
    redis.call('ZREMRANGEBYSCORE', rl, '-inf', now_ms - window)
    local held = redis.call('ZCARD', rl)
    if held + need > limit then
      local wait = window
      if need <= limit then
        -- Room for these jobs once the oldest (held + need - limit) members leave the window.
        local oldest = redis.call('ZRANGE', rl, held + need - limit - 1,
          held + need - limit - 1, 'WITHSCORES')
        wait = math.max(1, tonumber(oldest[2]) + window - now_ms)
      end
      return {{-1, wait, pair[2]}}
    end
  end
end

local t = now()
local replies = {}
for i, j in ipairs(jobs) do
  local reply = j.existing
  if not reply then
    local again = redis.call('HMGET', j.job, 'state', 'digest')
    if again[1] then
      reply = {0, again[1], again[2] or ''}  -- the same id twice in this call
    end
  end
  if not reply then
    if limit > 0 then
      -- The job id is unique, so two jobs in the same millisecond are two members.
      redis.call('ZADD', j.rl, now_ms, j.id)
      redis.call('PEXPIRE', j.rl, window)
    end
    if j.bytes ~= '' then
      redis.call('SET', j.audio, j.bytes)
    end
    local entry = redis.call('XADD', stream, '*', unpack(ARGV, j.first, j.last))
    redis.call('HSET', j.job, 'state', 'queued', 'entry', entry, 'digest', j.digest,
      'created_at', t, 'attempts', 0, 'fence', 0, 'fields', j.fields)
    redis.call('HSET', index, entry, j.id)
    redis.call('HINCRBY', counts, 'submitted', 1)
    emit(events, maxlen, 'job.queued', t, j.id, '', '{"entry":"' .. entry .. '"}')
    reply = {1, entry, j.digest}
  end
  replies[i] = reply
end
return replies
