-- The `hand_back` transition: a draining worker returns its running job to the queue. It is not counted as an
-- attempt (the start that follows adds the one this takes back), the run lock is released and the job is listed as
-- unsent until its new message is confirmed sent (a reaper sends it if the worker dies in between).
-- KEYS: 1 job hash, 2 events channel, 3 running jobs (set), 4 unsent jobs (zset), 5 the job's run lock,
--       6 its tenant's queued jobs (set; '' for no tenant)
-- ARGV: 1 now, 2 job id, 3 the lock holder's token ('': no lock check), 4 the worker handing it back
-- Returns {'ok', the whole record flattened}, or {'missing' | 'refused', current state}.
local current = redis.call('HGET', KEYS[1], 'state')
if not current then return {'missing', ''} end
if current ~= 'running' then return {'refused', current} end
if ARGV[3] ~= '' then
  if redis.call('GET', KEYS[5]) ~= ARGV[3] then return {'refused', current} end
  redis.call('DEL', KEYS[5])
end
local attempts = tonumber(redis.call('HGET', KEYS[1], 'attempts') or '0')
local history = cjson.decode(redis.call('HGET', KEYS[1], 'history') or '[]')
table.insert(history, {state = 'handed_back', worker = ARGV[4], at = tonumber(ARGV[1]), attempts = attempts})
-- The queue deadline was met when the job first started: it must not expire now that it waits again.
redis.call('HDEL', KEYS[1], 'expires_at')
redis.call('HSET', KEYS[1], 'state', 'queued', 'attempts', math.max(attempts - 1, 0), 'history',
  cjson.encode(history))
redis.call('SREM', KEYS[3], ARGV[2])
redis.call('ZADD', KEYS[4], ARGV[1], ARGV[2])
if KEYS[6] ~= '' then redis.call('SADD', KEYS[6], ARGV[2]) end
redis.call('PUBLISH', KEYS[2], 'queued')
return {'ok', redis.call('HGETALL', KEYS[1])}
