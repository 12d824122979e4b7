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

local function is_terminal(state)
  return state == 'completed' or state == 'failed' or state == 'dead' or state == 'cancelled'
end
