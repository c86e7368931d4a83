-- Add a submit's characters to its tenant's count for one UTC day, unless that would go over the daily limit; or
-- give characters back (a negative count) when the submit they were added for did not create a job.
-- KEYS: 1 the tenant's characters on that day (a counter)
-- ARGV: 1 characters to add (negative: to give back), 2 the daily limit (0: none), 3 the key's ttl in seconds
-- Returns {1, characters used that day} when added (or given back), {0, characters used} when refused (nothing
-- added).
local count, limit = tonumber(ARGV[1]), tonumber(ARGV[2])
local used = tonumber(redis.call('GET', KEYS[1]) or '0')
if count < 0 then
  if used == 0 then return {1, 0} end  -- the day's key is gone: nothing to give back
  return {1, redis.call('DECRBY', KEYS[1], math.min(-count, used))}
end
if limit > 0 and used + count > limit then return {0, used} end
local total = redis.call('INCRBY', KEYS[1], count)
if total == count then redis.call('EXPIRE', KEYS[1], ARGV[3]) end
return {1, total}
