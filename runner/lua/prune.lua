-- Remove consumers that hold no pending entries (a consumer's pending entries would be lost
-- with it). Checked and removed in one script, so no read can slip in between.
-- KEYS: stream
-- ARGV: group, then consumer names
local removed = 0
for i = 2, #ARGV do
  local p = redis.call('XPENDING', KEYS[1], ARGV[1], '-', '+', 1, ARGV[i])
  if #p == 0 then
    redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], ARGV[i])
    removed = removed + 1
  end
end
return removed
