-- Read new entries and start their attempts in one call: the worker's fast path under load.
-- Only jobs submitted through the enqueue script are started here (their record names this
-- entry, so no digest is needed); the rest come back as {'new'} for the worker to parse and
-- start with the begin script (a plain XADD's record starts there, with its digest).
-- Nothing after the read may fail the call (the entries read would be answered to nobody):
-- the keys are checked first, and each attempt starts under pcall.
-- KEYS: stream, events, dead letters, entries index, counts
--       (every job key is derived from the prefix: same hash slot as the keys above)
-- ARGV: consumer, group, events_maxlen, max_attempts, ttl, prefix, count
-- Returns {entry, {field, value, ...}, begin_attempt reply or {'new'}} per entry read.
local bad = check_batch_keys()
if bad then return bad end
local c = batch_context()
local read = redis.call('XREADGROUP', 'GROUP', c.group, c.consumer, 'COUNT', ARGV[7],
  'STREAMS', c.stream, '>')
if not read then
  return {}
end
local replies = {}
for _, e in ipairs(read[1][2]) do
  local entry, f = e[1], e[2]
  local reply = {'new'}
  local job_id
  for i = 1, #f, 2 do
    if f[i] == 'job_id' then
      job_id = f[i + 1]
      break
    end
  end
  if job_id then
    local job = job_key(c.prefix, 'job', job_id)
    if key_type(job) == 'hash' and redis.call('HGET', job, 'entry') == entry then
      reply = try_begin(c, entry, job_id, '', '', 1)
    end
  end
  replies[#replies + 1] = {entry, f, reply}
end
return replies
