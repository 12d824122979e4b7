-- Renew the leases of a worker's running jobs: reset each entry's idle time, if still ours.
-- KEYS: stream, then one job key per lease
-- ARGV: group, consumer, then entry and fence for each lease, in the order of KEYS
-- Returns one integer per lease: 1 renewed, 0 lost (another owner, or a newer token),
-- 2 the token is current but the entry is no longer pending (deleted from the stream).
local stream, group, consumer = KEYS[1], ARGV[1], ARGV[2]
local out = {}
for j = 1, #KEYS - 1 do
  local entry, fence = ARGV[1 + 2 * j], ARGV[2 + 2 * j]
  local owner = pending_owner(stream, group, entry)
  local current = redis.call('HGET', KEYS[1 + j], 'fence') == fence
  if owner == consumer and current then
    -- JUSTID: resets the idle time without counting a delivery.
    local claimed = redis.call('XCLAIM', stream, group, consumer, 0, entry, 'JUSTID')
    out[j] = #claimed == 1 and 1 or 2
  elseif owner == nil and current then
    -- Not pending: acknowledged by this attempt's own commit a moment ago, or deleted by hand.
    local state = redis.call('HGET', KEYS[1 + j], 'state')
    out[j] = (state and is_terminal(state)) and 1 or 2
  else
    out[j] = 0
  end
end
return out
