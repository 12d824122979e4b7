-- Publish one event that is not part of a job's state change (breaker changes, for one).
-- KEYS: events
-- ARGV: events_maxlen, type, job_id, worker, data
local bad = check_keys({KEYS[1], 'stream'})
if bad then return bad end
emit(KEYS[1], ARGV[1], ARGV[2], now(), ARGV[3], ARGV[4], ARGV[5])
return 1
