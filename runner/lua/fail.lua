-- End a job without a result: record why, dead-letter it, acknowledge and delete its entry
-- (see end_job in lib.lua).
-- KEYS: stream, events, dead letters, entries index, counts
-- ARGV: worker, group, events_maxlen, max_attempts, ttl, prefix (as batch_context), then
--       fence ('' when no attempt was started), entry, job_id, state, reason, error,
--       error_class, fields_json, record ('0': the id belongs to another job: leave its record
--       alone), dead_letter ('1': add to the dead letters), deliveries, truncated
-- Returns 1 ended (or already was), 0 fenced off.
local bad = check_batch_keys()
if bad then return bad end
local c = batch_context()
if ARGV[7] == '' and ARGV[16] == '1' then
  -- No attempt, so no token to fence with: the entry itself says whether this call still
  -- stands. Gone from the group: already ended (a retried call, or a peer got there first).
  local owner = pending_owner(c.stream, c.group, ARGV[8])
  if owner == nil then return 1 end
  if owner ~= c.consumer then return 0 end
end
return end_job(c, {fence = ARGV[7], entry = ARGV[8], job_id = ARGV[9], state = ARGV[10],
  reason = ARGV[11], error = ARGV[12], error_class = ARGV[13], fields = ARGV[14],
  record = ARGV[15] == '1', dead_letter = ARGV[16] == '1', deliveries = ARGV[17],
  truncated = ARGV[18], worker = c.consumer})
