-- Renew the leases of a worker's running jobs: reset each entry's idle time, if still ours.
-- KEYS: stream, then one job key per lease
-- ARGV: group, consumer, then entry and fence for each lease, in the order of KEYS
-- Returns one integer per lease: 1 renewed, 0 lost (another owner, a newer token, or the job
-- ended), 2 the token is current but the entry is no longer pending (deleted from the stream).
local stream, group, consumer = KEYS[1], ARGV[1], ARGV[2]
local out = {}
for j = 1, #KEYS - 1 do
  local entry, fence, job = ARGV[1 + 2 * j], ARGV[2 + 2 * j], KEYS[1 + j]
  local current = false
  if key_type(job) == 'hash' then
    local h = redis.call('HMGET', job, 'fence', 'state')
    current = h[1] == fence and h[2] == 'running'
  end
  local owner = pending_owner(stream, group, entry)
  if owner == consumer and current then
    -- JUSTID: resets the idle time without counting a delivery.
    local claimed = redis.call('XCLAIM', stream, group, consumer, 0, entry, 'JUSTID')
    out[j] = #claimed == 1 and 1 or 2
  elseif owner == nil and current then
    out[j] = 2  -- running on our token, but the entry was deleted by hand
  else
    out[j] = 0
  end
end
return out
