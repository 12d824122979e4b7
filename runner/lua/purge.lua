-- Delete dead letters, and the uploaded audio of their jobs unless a job is live again.
-- KEYS: dead letters
-- ARGV: prefix, then dead letter ids
-- Returns how many dead letters were deleted.
local bad = check_keys({KEYS[1], 'stream'})
if bad then return bad end
local removed = 0
for i = 2, #ARGV do
  local found = redis.call('XRANGE', KEYS[1], ARGV[i], ARGV[i])
  if #found > 0 then
    local f, job_id = found[1][2], nil
    for k = 1, #f, 2 do
      if f[k] == 'job_id' then job_id = f[k + 1] end
    end
    if job_id then
      local job = job_key(ARGV[1], 'job', job_id)
      local state = nil
      if key_type(job) == 'hash' then state = redis.call('HGET', job, 'state') end
      if not state or is_terminal(state) then
        redis.call('DEL', job_key(ARGV[1], 'audio', job_id))
      end
    end
    removed = removed + redis.call('XDEL', KEYS[1], ARGV[i])
  end
end
return removed
