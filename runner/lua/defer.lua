-- Put off an entry this consumer holds but could not start (an error of the runner's own):
-- back-date its delivery so that a reclaim takes it again after `delay`, counting a delivery.
-- KEYS: stream
-- ARGV: group, consumer, entry, idle_ms
-- Returns 1 deferred, 0 not ours.
if pending_owner(KEYS[1], ARGV[1], ARGV[3]) ~= ARGV[2] then
  return 0
end
redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, ARGV[3], 'IDLE', ARGV[4], 'JUSTID')
return 1
